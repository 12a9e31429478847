"""MLflow pyfunc wrapper of a synthesizer bundle, logged as "models from code" (no pickle at load time).

MLflow loads this file, which builds the model from the bundle stored as the artifact "bundle".
predict() takes a DataFrame with a "query" column (and optional "steps", "seed") and returns waveforms.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc.model import PythonModel


class SynthesizerModel(PythonModel):
    def load_context(self, context) -> None:
        from clipsynth_core import Synthesizer

        self.synthesizer = Synthesizer.load(context.artifacts["bundle"])

    # The DataFrame hint tells MLflow to pass the input through as it is (no schema inference from hints).
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None):
        df = model_input
        queries = [str(q) for q in df["query"]]
        steps = int(df["steps"].iloc[0]) if "steps" in df else None
        seed = int(df["seed"].iloc[0]) if "seed" in df else None
        wave = self.synthesizer.synthesize(queries, steps=steps, seed=seed)
        return [w.tolist() for w in wave]


mlflow.models.set_model(SynthesizerModel())
