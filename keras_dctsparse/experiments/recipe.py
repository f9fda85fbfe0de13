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
