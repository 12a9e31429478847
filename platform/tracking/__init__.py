"""MLflow glue shared by the stages: the model registry (`registry`: bundles as registered models, model URIs
resolved to local bundles) and the pyfunc wrapper logged with each bundle (`mlflow_model`)."""
