"""The `dctsparse evaluate` and `dctsparse export` commands (on a saved `.keras` model)."""

import os

from keras_dctsparse.experiments import common
from keras_dctsparse.experiments.common import CLIError

__all__ = [
    "evaluate",
    "export",
]


def evaluate(args):
    from keras_dctsparse.experiments import data

    model = common.load_model(args.model_path)
    dataset = common.load_data(args)
    expected = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None
    if expected is not None and tuple(dataset.input_shape) != expected:
        raise CLIError(
            f"--model-path {args.model_path!r} takes inputs of shape {expected}, but "
            f"--dataset {args.dataset} has shape {tuple(dataset.input_shape)}",
            status=2,
        )
    if not getattr(model, "compiled", False) or model.loss is None:
        import keras

        model.compile(
            loss=keras.losses.SparseCategoricalCrossentropy(
                from_logits=not common.outputs_probabilities(model)
            ),
            metrics=["accuracy"],
        )
    test = data.make_eval_dataset(dataset.x_test, dataset.y_test, args.batch_size)
    metrics = model.evaluate(test, verbose=0, return_dict=True)
    accuracy = float(metrics.get("accuracy", metrics.get("compile_metrics", float("nan"))))
    print(f"test accuracy: {accuracy:.4f}")
    return accuracy


def _check_export_target(args):
    from keras_dctsparse import atomic

    output = args.output
    if args.format == "tflite" and os.path.isdir(output):
        raise CLIError(
            f"--output {output!r} is a folder; TFLite export writes one file "
            f"(for example {os.path.join(output, 'model.tflite')!r})",
            status=2,
        )
    ours, kind = (
        (atomic.is_savedmodel, "a SavedModel") if args.format == "savedmodel"
        else (atomic.is_tflite, "a TFLite file")
    )
    try:
        atomic.check_target(output, ours, kind, getattr(args, "overwrite", False))
    except atomic.OutputExistsError as error:
        raise CLIError(f"--output {error}", status=2) from None


def export(args):
    if args.format == "savedmodel" and (
        args.quantization != "none"
        or args.dct_constants != "stored"
        or args.form != "implicit"
        or args.max_kernel_bytes is not None
        or args.sparse_product != "gather"
    ):
        raise CLIError(
            "--quantization, --dct-constants, --form, --max-kernel-bytes and "
            "--sparse-product apply to --format tflite only",
            status=2,
        )
    _check_export_target(args)
    from keras_dctsparse.export.tflite import export_tflite

    model = common.load_model(args.model_path)
    try:
        if args.format == "savedmodel":
            common.export_savedmodel(model, args.output, check=False)
        else:
            parent = os.path.dirname(os.path.abspath(args.output))
            os.makedirs(parent, exist_ok=True)
            if os.path.lexists(args.output) and not os.path.isfile(args.output):
                raise CLIError(f"--output {args.output!r} is not a file", status=2)
            quantization = None if args.quantization == "none" else args.quantization
            bound = {}
            if args.max_kernel_bytes is not None:
                bound["max_kernel_bytes"] = args.max_kernel_bytes
            export_tflite(
                model,
                args.output,
                quantization=quantization,
                dct_constants=args.dct_constants,
                form=args.form,
                sparse_product=args.sparse_product,
                **bound,
            )
    except (NotImplementedError, ValueError) as error:
        raise CLIError(f"export to {args.format} failed: {error}") from error
    print(f"exported {args.format} to {args.output}")
