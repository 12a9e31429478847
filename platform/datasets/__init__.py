"""What the stages read and write: the one Parquet schema of the shards (`schema`), the built-in sample corpus
(`corpus/`), a synthetic dataset in the shard schema for tests and smoke runs (`synthetic`), and the captions a
label is phrased in (`captions`)."""
