import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

MNIST_DIR = os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")
)
