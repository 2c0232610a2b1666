"""The transfer task the built-in studies share: MNIST digits 0-4 pretrain a backbone for 5-9.

A leading underscore keeps this module out of the study registry's discovery.
"""

from harness.config.spec import PretrainRecipe

MNIST_0_4_TO_5_9 = {
    "dataset": "mnist5k",
    "classes": (5, 6, 7, 8, 9),
    "model": "small_cnn",
    "pretrain": PretrainRecipe(dataset="mnist5k", classes=(0, 1, 2, 3, 4)),
}
