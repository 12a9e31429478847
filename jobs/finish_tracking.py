"""Send to MLflow what a training run kept in storage while the tracking server was away, register the bundle
it kept, and end the run. A run prints this command when it ends with something MLflow did not take:

    MLFLOW_TRACKING_URI=http://mlflow:5000 python jobs/finish_tracking.py --storage-path s3://b/runs --run-name r

It sends `<storage>/<run>/tracking_pending/` (metrics, params, tags, artifacts, the run's status, in their
order; a metric step MLflow already holds is not sent again) and registers `<storage>/<run>/bundles/step_N/`
when the run record notes a pending registration (platform/train/registration.py). Running it twice is safe.
"""

import json

from clipsynth_platform.runtime.logs import configure_logging
from clipsynth_platform.runtime.options import parse_config
from clipsynth_platform.train.registration import RunCompletionConfig, complete_run

if __name__ == "__main__":
    configure_logging()
    print(json.dumps(complete_run(parse_config(RunCompletionConfig, None, __doc__)).to_dict()))
