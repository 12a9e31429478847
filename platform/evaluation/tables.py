"""Table 1 as data: rows (model, variant, train and test query type) with one cell per dataset, the columns'
backbones and references, and the modality gaps; built by compare.py, rendered by table_render.py."""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import normalize_dataset

# The paper's row order: generative models by (train, test) query type, then the baselines.
ROW_ORDER = [
    ("image", "text"),
    ("text", "text"),
    ("hybrid", "text"),
    ("image", "image"),
    ("text", "image"),
    ("hybrid", "image"),
    ("retriever", "text"),
    ("retriever", "image"),
    ("hifigan-recon", "n/a"),
]
DATASET_NAMES = {"music": "MUSIC", "vggsound": "VGG-Sound"}
# Table columns, in this order, where any run of the table has them.
METRICS = ("fad", "fad_melclf", "fid", "fd_melclf", "relevance")


@dataclass
class TableRow:
    model: str
    variant: str
    generative: str
    unlabeled_only: str
    train_query_type: str
    test_query_type: str
    cells: dict[str, dict[str, float | str]] = field(default_factory=dict)  # dataset -> metric -> value, run_id

    def sort_key(self) -> tuple:
        order = (self.variant, self.test_query_type)
        return (ROW_ORDER.index(order) if order in ROW_ORDER else len(ROW_ORDER), self.model)


@dataclass
class Table:
    """One table: runs whose columns each have one backbone and one reference."""

    rows: list[TableRow]
    datasets: list[str]
    metrics: list[str]
    backbones: dict[tuple[str, str], str]  # (dataset, metric) -> backbone identity
    references: dict[tuple[str, str], str]  # (dataset, metric) -> what the samples are compared with
    notes: list[str] = field(default_factory=list)
    random: bool = False
    runs: int = 0


def dataset_name(d: str) -> str:
    return DATASET_NAMES.get(normalize_dataset(d), d)


def cell_value(cell: dict[str, float | str], metric: str) -> float | None:
    """A metric's value in a table cell (the cell also holds its run's id, a string)."""
    value = cell.get(metric)
    return value if isinstance(value, float) else None


def modality_gaps(table: Table) -> list[dict]:
    """metric(text queries) - metric(image queries) per (model, variant, train query type, dataset, metric)."""
    out = []
    by_key = {(r.model, r.variant, r.train_query_type, r.test_query_type): r for r in table.rows}
    for (model, variant, train_q, test_q), row in by_key.items():
        other = by_key.get((model, variant, train_q, "image"))
        if test_q != "text" or other is None:
            continue
        for d in table.datasets:
            for k in table.metrics:
                text, image = cell_value(row.cells.get(d, {}), k), cell_value(other.cells.get(d, {}), k)
                if text is None or image is None:
                    continue
                out.append(
                    {
                        "model": model,
                        "variant": variant,
                        "train_query_type": train_q,
                        "dataset": d,
                        "metric": k,
                        "text": text,
                        "image": image,
                        "modality_gap": text - image,
                    }
                )
    return out
