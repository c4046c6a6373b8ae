"""The data path, one module per concern:

    sources        config.data -> DatasetInfo and each host's undecoded (key, label) records
    tfds_source    prepared TFDS datasets (ImageNet's `imagenet2012`, any other by name)
    folder         DIR/<split>/<class>/<image> folders
    digits         scikit-learn's digits, prepared offline as a TFDS dataset (the default run)
    mean           the image mean, computed once and stored beside the dataset
    preprocessing  the paper's augmentation and test views (TensorFlow ops)
    input_pipeline deterministic, resumable training batches and exactly-once evaluation

`python -m rectifiers_jax.data prepare_digits|mean` prepares the digits or stores the mean.
"""
