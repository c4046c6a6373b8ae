"""The data path, one module per concern:

    sources        config.data -> DatasetInfo and each host's undecoded (key, label) records
    tfds_source    prepared TFDS datasets (ImageNet's `imagenet2012`, any other by name)
    folder         DIR/<split>/<class>/<image> folders
    offline        writes the project's own TFDS datasets once per data_dir (no network)
    digits         scikit-learn's digits, 8x8 (the default run)
    photos         10 classes of crops of packaged colour photographs, 256-320 px (full width)
    mean           the image mean, computed once and stored beside the dataset
    preprocessing  the paper's augmentation and test views (TensorFlow ops)
    input_pipeline deterministic, resumable training batches and exactly-once evaluation

`python -m rectifiers_jax.data prepare|mean` prepares an offline dataset or stores the mean.
"""
