"""Each command's flags, and the groups of flags several commands share. Choices come from the option
enums; counts are typed ints whose ranges the API checks (and the command line reports under the flag's
name). A path flag's destination names its role (:data:`mstransform.tools.arguments.ROLES`)."""
from __future__ import annotations

from mstransform.core.options import (DEFAULT_ATTACKS, Center, Device, Formulation, Mode, Placement, Precision,
                                      Runtime)


def _values(enum_type) -> list[str]:
    return [m.value for m in enum_type]


# -- groups several commands share ----------------------------------------------------------
def _model(p, help_text="the ONNX model (never modified)"):
    p.add_argument("model", help=help_text)


def _add_selection(p, placement_default=Placement.ACTIVATIONS.value,
                   placement_help="where operators go (default: activations, as in the paper)"):
    g = p.topic("operator")
    g.add_argument("--placement", default=placement_default, choices=_values(Placement), help=placement_help)
    g.add_argument("--include", metavar="REGEX", help="keep only sites whose name or tensor matches REGEX")
    g.add_argument("--exclude", metavar="REGEX", help="drop sites whose name or tensor matches REGEX")
    g.add_argument("--include-se", action="store_true", help="also harden activations inside Squeeze-and-Excitation")
    g.add_argument("--axis", action="append", metavar="SITE=AXIS", help="override a site's channel axis")


def _add_data(p, required=False, help_text="clean training data: .npy, .npz (keys = input names) or a folder of images"):
    g = p.topic("data")
    g.add_argument("--data", required=required, metavar="PATH", help=help_text)
    g.add_argument("--batch-size", type=int, default=64, help="samples per run of the model (default 64)")
    g.add_argument("--limit", type=int, metavar="N", help="use at most N samples")
    g.add_argument("--scale", type=float, help="multiply raw values by this (default 1/255 for integer data)")
    g.add_argument("--mean", help="per-channel mean to subtract after scaling, e.g. 0.485,0.456,0.406")
    g.add_argument("--std", help="per-channel std to divide by after subtracting the mean")
    g.add_argument("--size", help="resize images to W,H (default: the model input's size)")
    g.add_argument("--batch-axis", action="append", metavar="NAME=AXIS",
                   help="the axis of input NAME that holds the samples, or NAME=none to pass it whole with every "
                        "batch (default: found from the model's dim names)")


def _add_json(p):
    p.topic("output").add_argument("--json", metavar="FILE", help="also write the result as JSON to FILE, for machines")


def _add_runtime(p, help_text="which runtime runs the .onnx file (openvino: its CPU plugin; needs the openvino extra)"):
    p.topic("runtime").add_argument("--runtime", choices=_values(Runtime), default=Runtime.ONNXRUNTIME.value,
                                    help=help_text)


def _add_device(p):
    p.topic("runtime").add_argument(
        "--device", choices=_values(Device), help="cpu or cuda: ONNX Runtime's CPU or CUDA provider, and the torch "
                                                  "device of the twin and attacks (default: the best provider that "
                                                  "starts here)")


def _add_providers(p):
    p.topic("runtime").add_argument("--providers", help="comma-separated ONNX Runtime providers (default: "
                                                        "TensorRT > CUDA > CPU)")


def _add_attack(p):
    g = p.topic("attack")
    g.add_argument("--eps", type=float, default=0.1, help="perturbation budget (pixel scale [0,1]; default 0.1)")
    g.add_argument("--norm", default="Linf", choices=["Linf", "L2"], help="threat model (default Linf)")
    g.add_argument("-n", "--images", type=int, default=500, help="number of images (default 500)")
    g.add_argument("--batch-size", type=int, default=250, help="images per attack batch and per chunk (default 250)")
    g.add_argument("--seed", type=int, default=0, help="attack seed; each chunk's is derived from it and its first "
                                                       "image (default 0)")
    g.add_argument("--apgd-iters", type=int, default=100, help="APGD iterations (default 100)")
    g.add_argument("--pgd-steps", type=int, default=20, help="PGD steps (with torchattacks; default 20)")
    g.add_argument("--square-queries", type=int, default=1000, help="Square attack queries (default 1000)")


def _add_chunks(p):
    g = p.topic("output")
    g.add_argument("--shard", metavar="I/N", help="only chunks I, I+N, ... of --batch-size images (merge the "
                                                  "shards' --json with `eval merge`)")
    g.add_argument("--fresh", action="store_true", help="start over: ignore the chunks kept by an interrupted run")


# -- one function per command ---------------------------------------------------------------
def harden_flags(p):
    _model(p, "input ONNX model (never modified)")
    g = p.topic("inputs")
    g.add_argument("--stats", metavar="NPZ", help="statistics from `mstransform calibrate`")
    g.add_argument("--ignore-fingerprint", action="store_true", help="accept stats measured on another export")
    _add_data(p, help_text="clean training data to calibrate on now (without --stats), or to probe the written "
                           "model with (beside --stats)")
    g = p.topic("operator")
    g.add_argument("--alpha", action="append", metavar="A|SITE=A",
                   help="threshold multiplier (default 0.2); repeat SITE_REGEX=A for per-site values")
    g.add_argument("--mode", default=Mode.MEANSPARSE.value, choices=_values(Mode),
                   help="meansparse (center the mean, threshold alpha*sigma) or forged (center 0, threshold "
                        "alpha*max|x|, before linear layers)")
    g.add_argument("--center", default=Center.MEAN.value, choices=_values(Center),
                   help="center of the blocked band (meansparse; paper A.7)")
    g.add_argument("--formulation", default=Formulation.WHERE.value, choices=_values(Formulation),
                   help="Sub/Abs/Less/Where (default) or a bool-free float form")
    _add_selection(p, None, "placement when calibrating with --data (default: activations; linear-inputs for forged)")
    g = p.topic("output")
    g.add_argument("-o", "--output", help="output model (default: MODEL.<mode>.onnx next to the input)")
    g.add_argument("--save-stats", metavar="NPZ", help="with --data: where to keep the measured stats")
    g.add_argument("--precision", default=Precision.FP32.value, choices=_values(Precision),
                   help="float type of the written model: fp16/bf16 for strongly typed engines such as TensorRT 11 "
                        "(graph I/O stays fp32)")
    _add_json(p)
    g = p.topic("checks")
    g.add_argument("--eval", metavar="DATA", help="labelled data (.npz with 'labels'): print clean accuracy before/after")
    g.add_argument("--no-verify", action="store_true", help="skip the post-write checks")
    _add_runtime(p)


def sites_flags(p):
    _model(p)
    p.topic("inputs").add_argument("--stats", metavar="NPZ",
                                   help="with --data: measure, per site, the values the operator replaces")
    _add_selection(p)
    p.topic("operator").add_argument("--alpha", action="append", metavar="A|SITE=A",
                                     help="with --stats: threshold multiplier (default 0.2); repeat SITE_REGEX=A for "
                                          "per-site values")
    _add_data(p)
    _add_json(p)
    p.topic("output").add_argument("--plot", metavar="PNG", help="with --stats: the replaced fraction against site "
                                                                 "depth")


def calibrate_flags(p):
    _model(p)
    _add_data(p, required=True)
    _add_selection(p)
    g = p.topic("output")
    g.add_argument("-o", "--output", required=True, help="stats file to write (.npz)")
    _add_json(p)
    g.add_argument("--shard", metavar="I/N", help="only batches I, I+N, I+2N, ... (merge shards with `stats merge`)")
    p.topic("operator").add_argument("--extent", action="store_true", default=None,
                                     help="also measure each channel's max |x| (forged mode needs it; on by default "
                                          "with --placement linear-inputs; two more reads of every site tensor)")
    _add_device(p)
    _add_runtime(p)


def stats_flags(p):
    ss = p.add_subparsers(dest="stats_command", required=True, parser_class=type(p), metavar="{inspect,merge}",
                          help="what to do with stats files")
    ss.add_parser("inspect", help="summarise a stats file").add_argument("stats", help="the stats file (.npz)")
    q = ss.add_parser("merge", help="merge shards (Chan's rule in float64)")
    q.add_argument("inputs", nargs="+", help="the shards' stats files")
    q.add_argument("-o", "--output", required=True, help="merged stats file (.npz)")


def check_trt_flags(p):
    _model(p)
    p.add_argument("--trt-version", default=None,
                   help="TensorRT release to check against: 8.5, 8.6, 9.2, 10.0, 10.1 or 11 (default 10.1)")
    p.add_argument("--fp16", action="store_true", help="also check constants are representable in fp16")
    _add_json(p)


def engine_flags(p):
    _model(p)
    p.add_argument("-o", "--output", required=True, help="engine file (.plan)")
    p.add_argument("--fp16", action="store_true", help="let TensorRT 10 choose fp16 kernels (refused on 11: harden "
                                                       "with --precision fp16 instead)")
    p.add_argument("--bf16", action="store_true", help="let TensorRT 10 choose bf16 kernels (refused on 11)")
    p.add_argument("--shapes", help="MIN/OPT/MAX batch sizes (1/8/64) or NAME:1x3x224x224/.../... per input")
    p.add_argument("--workspace", type=int, default=1024, help="workspace limit in MiB")
    p.add_argument("--timing-cache", help="timing cache file (read if present, written after the build)")


def run_flags(p):
    _model(p)
    _add_data(p, required=True, help_text="the samples to run: .npy, .npz (keys = input names; 'labels' for "
                                          "accuracy) or a folder of images")
    p.topic("output").add_argument("-o", "--output", help="OUT.npz: every output, one array per output; any other "
                                                          "name: the predictions (.npy; class scores only)")
    _add_json(p)
    _add_providers(p)
    _add_device(p)
    _add_runtime(p)


def eval_flags(p):
    p.add_argument("models", nargs="+", help="ONNX models (base first, then hardened ones)")
    p.topic("data").add_argument("--data", required=True, help="labelled data in [0,1] after scaling (.npz with "
                                                               "'labels')")
    _add_attack(p)
    p.topic("attack").add_argument("--attacks", default=",".join(DEFAULT_ATTACKS),
                                   help="comma-separated; pgd also available when torchattacks is installed")
    g = p.topic("output")
    g.add_argument("--json", help="write the results as JSON (with every image's verdicts; finished chunks are "
                                  "kept in JSON.parts/ until it is written, and a rerun resumes from them)")
    g.add_argument("--csv", help="write the results as CSV")
    _add_chunks(p)
    _add_device(p)
    _add_runtime(p)


def eval_merge_flags(p):
    p.add_argument("reports", nargs="+", help="the shards' JSON reports")
    p.add_argument("-o", "--output", required=True, help="merged JSON report")


def sweep_flags(p):
    _model(p, "the base ONNX model")
    p.topic("inputs").add_argument("--stats", required=True, help="its statistics (from `mstransform calibrate`)")
    p.topic("data").add_argument("--data", required=True, help="held-out TRAINING split with labels (never the "
                                                               "test set)")
    g = p.topic("operator")
    g.add_argument("--alphas", default="0.05,0.1,0.15,0.2,0.3,0.5", help="the alphas to try, comma-separated "
                                                                        "(default 0.05,0.1,0.15,0.2,0.3,0.5)")
    g.add_argument("--max-clean-drop", type=float, default=0.5, help="clean-accuracy budget in points (default 0.5)")
    _add_attack(p)
    g = p.topic("output")
    g.add_argument("--plot", help="PNG of clean, standard-robust and BPDA-robust accuracy against alpha")
    g.add_argument("--json", help="write the sweep as JSON")
    g.add_argument("--csv", help="write the sweep as CSV")
    _add_chunks(p)
    _add_device(p)


def plot_flags(p):
    _model(p)
    p.topic("inputs").add_argument("--stats", required=True, help="its statistics (from `mstransform calibrate`)")
    g = p.topic("data")
    g.add_argument("--data", required=True, help="the samples whose values are plotted")
    g.add_argument("--limit", type=int, default=512, help="at most this many samples (default 512)")
    g = p.topic("operator")
    g.add_argument("--site", required=True, help="the site to plot (`mstransform sites` lists them)")
    g.add_argument("--channel", type=int, default=0, help="the channel to plot (default 0)")
    g.add_argument("--alpha", type=float, default=0.2, help="threshold multiplier (default 0.2)")
    p.topic("output").add_argument("-o", "--output", required=True, help="PNG file")


def bench_flags(p):
    p.add_argument("base", help="the base ONNX model")
    p.add_argument("hardened", help="the hardened ONNX model (same inputs)")
    g = p.topic("data")
    g.add_argument("--batch-sizes", default="1", metavar="B,B,...", help="batch sizes to time (default 1)")
    g.add_argument("--warmup", type=int, default=5, help="untimed calls per model and batch size (default 5)")
    g.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    g.add_argument("--runs", type=int, default=10, help="timed calls per model in each round (default 10)")
    _add_providers(p)
    _add_device(p)
    p.topic("runtime").add_argument("--runtime", default=Runtime.ONNXRUNTIME.value, metavar="R[,R...]",
                                    help=f"one or more runtimes ({', '.join(r.value for r in Runtime)}), comma-separated: "
                                         "one table per runtime (default onnxruntime)")
    p.topic("output").add_argument("--json", help="also write the report as JSON")
