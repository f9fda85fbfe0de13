"""The choices of the `dctsparse` command line and its default training recipe."""

MODELS = ("lenet300100", "lenet5", "vgg19", "resnet18", "resnet50", "mobilenetv2")
DISTRIBUTIONS = ("uniform", "epl", "epf", "erk")
OFFSETS = ("dct", "none")
OPTIMIZERS = ("adam", "sgd", "adamw")
SCHEDULES = ("constant", "cosine")
DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100")
DISTRIBUTE = ("none", "multi-worker")

# Sparse training (keras_dctsparse.DynamicSparsity): how the positions of S move
# during training. The defaults of `train` and `sweep` are these constants.
SPARSE_TRAININGS = ("static", "rigl", "set")

# The default recipe: the best found for the zoo's LeNets on an MNIST validation split
# (benchmarks/mnist_recipes.py; README "Results: MNIST"). `train` and `sweep` use these.
DEFAULT_DISTRIBUTION = "epl"
DEFAULT_OPTIMIZER = "adam"
DEFAULT_LR = 1e-2
DEFAULT_SCHEDULE = "cosine"
DEFAULT_SPARSE_TRAINING = "rigl"  # in one process; multi-worker training stays static
DEFAULT_UPDATE_EVERY = 50  # optimizer steps between position updates
DEFAULT_DROP_FRACTION = 0.5  # fraction of nonzeros moved per update at step 0 (cosine decay)
DEFAULT_END_FRACTION = 0.75  # fraction of all training steps after which positions stay fixed
DEFAULT_BATCH_SIZE = 128

# Where the validation split found another best for one model, its own batch size and
# update interval: LeNet-5 gains from more, smaller steps (batch 32, RigL every 200
# steps: as many examples between updates as every 50 steps at batch 128). LeNet-300-100
# does not (README, "Choosing the recipe on a validation split").
MODEL_RECIPES = {"lenet5": {"batch_size": 32, "update_every": 200}}


def recipe_defaults(model):
    """The default batch size and RigL/SET update interval of `dctsparse train` for `model`.

    Args:
        model: A name of `MODELS`.

    Returns:
        A dict with `"batch_size"` and `"update_every"`: `MODEL_RECIPES[model]` where it
        has them, else `DEFAULT_BATCH_SIZE` and `DEFAULT_UPDATE_EVERY`.

    Example:

    >>> recipe_defaults("lenet5"), recipe_defaults("lenet300100")
    ({'batch_size': 32, 'update_every': 200}, {'batch_size': 128, 'update_every': 50})
    """
    defaults = {"batch_size": DEFAULT_BATCH_SIZE, "update_every": DEFAULT_UPDATE_EVERY}
    defaults.update(MODEL_RECIPES.get(model, {}))
    return defaults
