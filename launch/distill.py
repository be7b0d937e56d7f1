r"""Distils a TF-Serving-served teacher into a compact student (FS-BBT by default; --method).

With no flags it runs the paper's Fashion-MNIST setting: it trains a LeNet-5 teacher into the work
dir (if none is there), serves it on a free loopback port, and distils LeNet-5-half from N = 2000
unlabeled images, 43,200 MixUp and 4,800 CVAE images.

  tfkd-distill --workdir=/tmp/tfkd_fashion        # or: python launch/distill.py ...
  tfkd-distill --teacher=teacher-host:8500 --teacher_model_name=my_model

On Vertex AI custom training, AIP_MODEL_DIR, AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR (when
set) receive the exported student, the student's checkpoints and the TensorBoard events
(tfkd.vertex.OutputDirs); TF_CONFIG drives multi-worker runs.
"""

import dataclasses
import json
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Before TensorFlow is imported.

from absl import app
from absl import flags
from absl import logging

from tfkd import active
from tfkd import boundary
from tfkd import client
from tfkd import data
from tfkd import errors
from tfkd import images
from tfkd import impressions
from tfkd import methods
from tfkd import models
from tfkd import pipeline
from tfkd import report as report_lib
from tfkd import synthesis
from tfkd import teacher
from tfkd import training
from tfkd import vertex
from tfkd import votes
from tfkd import zeroshot

# Every default below is read from the library's config dataclasses (one place); a flag whose
# default depends on the data or the method is None here and resolved by
# tfkd.pipeline.DistillConfig.resolved, as for a library user who leaves the field unset.
_CONFIG = pipeline.DistillConfig(workdir="")
_TEACHER = teacher.TeacherConfig()
_BOUNDARY = boundary.BoundaryConfig()
_ZERO_SHOT = zeroshot.ZeroShotConfig()
_ZSKD = impressions.ImpressionConfig()
_ZO = impressions.ZerothOrderConfig()
_VOTES = votes.VoteConfig()
_ACTIVE = active.ActiveConfig()
_MIXUP = synthesis.MixUpConfig()
_CVAE = synthesis.CVAEConfig()
_STUDENT = training.StudentConfig()


def _field_default(cls, name: str):
    """The default of a dataclass field that has no default instance (a required field)."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


flags.DEFINE_string("workdir", "/tmp/tfkd_fsbbt", "Work dir: ledger, synthetic set, checkpoints, "
                    "exported student, report.json. A rerun on the same dir resumes.")
flags.DEFINE_string("method", _CONFIG.method, "A registered method: " + "; ".join(
    f"{m}: {methods.get(m).description}" for m in methods.names()) + "; or one a --plugins "
    "module registers.")
flags.DEFINE_list("plugins", [], "Python modules imported before the run (their import registers "
                  "methods: tfkd.methods.register); module:function also calls function().")
flags.DEFINE_string("params_override", None, "Any DistillConfig setting by dotted name, as a JSON "
                    "object applied over the other flags (Model Garden's params_override), e.g. "
                    "'{\"student.epochs\": 10, \"db3kd.num_directions\": 5}'.")
flags.DEFINE_string("method_settings", None, "The method's own settings (its config_class) as a "
                    "JSON object of field values, e.g. '{\"num_noise\": 500}'; default: its "
                    "defaults.")
flags.DEFINE_enum("dataset", _CONFIG.dataset, list(data.SUPPORTED_DATASETS), "Dataset.")
flags.DEFINE_string("data_dir", None, "Directory of IDX files; default: the Debian package, then "
                    "keras.datasets.")
flags.DEFINE_string("images", None, "Your own unlabeled images instead of --dataset: a directory "
                    "(PNG/JPEG/BMP/GIF, nested folders allowed, folder names ignored), a file "
                    "pattern, or TFRecord files of tf.train.Example (--image_key). Read at the "
                    "teacher's input size; needs --teacher.")
flags.DEFINE_string("eval_images", None, "With --images: held-out images to evaluate on. One "
                    "sub-folder per class gives accuracy and fidelity; a flat folder or pattern "
                    "gives fidelity (top-1 agreement with the teacher) only.")
flags.DEFINE_string("image_key", _field_default(images.ImageSourceConfig, "image_key"),
                    "TFRecord feature holding the encoded image.")
flags.DEFINE_integer("image_height", None, "Image height; default: the teacher's input shape.")
flags.DEFINE_integer("image_width", None, "Image width; default: the teacher's input shape.")
flags.DEFINE_enum("image_channels", None, ["1", "3"], "Image channels; default: the teacher's.")
flags.DEFINE_string("class_names", None, "File of class names, one per line in the teacher's "
                    "order: the names of --eval_images' sub-folders. Default: sub-folders named "
                    "0..K-1, else in sorted order.")
flags.DEFINE_integer("seed", _CONFIG.seed, "Seed for sampling, synthesis and training.")
flags.DEFINE_integer("num_shots", None, "N: unlabeled real images, balanced over classes; default "
                     "the paper's (2000; 5000 for CIFAR-100). With --images: a uniform draw of N "
                     "of them; default all.")
flags.DEFINE_integer("num_validation", None, "Training images held out as the validation split "
                     "(the same for every seed and method): not used by the teacher tfkd trains nor "
                     "as few shots; monitoring and choices read it, never the test split. 0: none. "
                     "Default 5000; 0 with --images (no labels).")
flags.DEFINE_string("teacher", _TEACHER.target, "A running TF Serving server: host:port (its gRPC API) or "
                    "http(s)://host:port (its REST API: Vertex AI, KServe); empty: train a "
                    "teacher into the work dir if none is there and serve it locally.")
flags.DEFINE_string("teacher_model_name", _TEACHER.model_name, "The teacher's model name (model spec).")
flags.DEFINE_integer("teacher_version", None, "Pin a teacher version number; default: the latest.")
flags.DEFINE_string("teacher_version_label", None, "Pin a teacher version by label (e.g. stable).")
flags.DEFINE_string("teacher_signature", _TEACHER.signature_name, "The teacher's signature name.")
flags.DEFINE_string("teacher_input_key", None, "The image input's name; default: the signature's "
                    "only input.")
flags.DEFINE_enum("teacher_input_dtype", None, ["float32", "uint8"], "The image input's dtype; "
                  "default: from the metadata.")
flags.DEFINE_float("teacher_input_scale", None, "The value pixel intensity 1.0 maps to (1 or 255); "
                   "default: 255 for uint8, else 1.")
flags.DEFINE_string("teacher_output_key", None, "The output to read; default: probabilities, else "
                    "the only output.")
flags.DEFINE_enum("teacher_output", None, ["probabilities", "logits", "classes"], "What the output "
                  "holds; classes = top-1 ids (label-only teacher). Default: from the metadata.")
flags.DEFINE_list("teacher_class_map", None, "For a teacher whose classes are another order or a "
                  "subset of the data's: the data class of each teacher class, in the teacher's "
                  "order (e.g. 3,0,1). Default: the same classes in the same order.")
flags.DEFINE_bool("teacher_label_only", _TEACHER.label_only, "Use only the teacher's argmax (emulates a "
                  "decision-based API on a probability teacher).")
flags.DEFINE_float("teacher_timeout", _TEACHER.timeout_s, "Per-request deadline, seconds.")
flags.DEFINE_integer("teacher_max_in_flight", _TEACHER.max_in_flight, "Predict requests in flight at once.")
flags.DEFINE_integer("teacher_max_attempts", _TEACHER.retry.max_attempts,
                     "Attempts per request on UNAVAILABLE, "
                     "DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED (exponential backoff with jitter).")
flags.DEFINE_string("teacher_tls_ca", None, "CA bundle (PEM): use a TLS channel.")
flags.DEFINE_string("teacher_tls_cert", None, "Client certificate (PEM) for mutual TLS.")
flags.DEFINE_string("teacher_tls_key", None, "Client private key (PEM) for mutual TLS.")
flags.DEFINE_string("teacher_tls_server_name", None, "Override the TLS server name to verify.")
flags.DEFINE_string("teacher_auth_token_file", None, "File holding a token sent as "
                    "'authorization: Bearer <token>' on every call (never logged).")
flags.DEFINE_string("teacher_auth_token_env", None, "Environment variable holding that token.")
flags.DEFINE_integer("query_budget", None, "At most this many images sent to the teacher over the "
                     "work dir's whole life: labelling, the teacher's test evaluation, retries and "
                     "every earlier process on the same work dir (WORKDIR/ledger/queries_sent.log). "
                     "The run stops before sending anything if its plan needs more.")
flags.DEFINE_enum("teacher_architecture", _CONFIG.teacher_train.architecture,
                  ["auto", *models.MODELS], "Teacher trained when "
                  "--teacher is empty; auto: the paper's for the dataset (LeNet-5; AlexNet for "
                  "CIFAR-10; ResNet-32 for CIFAR-100).")
flags.DEFINE_integer("teacher_epochs", _CONFIG.teacher_train.epochs, "Epochs of the locally trained teacher.")
flags.DEFINE_integer("num_mixup", _MIXUP.num_images, "MixUp images (kept pairs).")
flags.DEFINE_float("mixup_alpha", _MIXUP.alpha, "MixUp λ ~ Beta(α, α).")
flags.DEFINE_integer("num_cvae", _CVAE.num_images, "CVAE images, equal per class.")
flags.DEFINE_integer("cvae_epochs", _CVAE.epochs, "CVAE training epochs.")
flags.DEFINE_integer("cvae_latent_dim", _CVAE.latent_dim, "CVAE latent size.")
flags.DEFINE_integer("cvae_working_size", _CVAE.working_size,
                     "The CVAE models images at this size and its samples "
                     "are resized up; 0: the image size up to 32, else 32.")
flags.DEFINE_enum("cvae_architecture", _CVAE.architecture, ["auto", "mlp", "conv"], "CVAE: mlp (28x28 grey), "
                  "conv (CIFAR); auto picks by dataset.")
flags.DEFINE_integer("active_rounds", _ACTIVE.rounds, "Under a --query_budget smaller than the "
                     "plan (FS-BBT family): rounds in which a proxy student chooses which pool "
                     "images the teacher is asked about; 0: cut the plan to the budget instead.")
flags.DEFINE_enum("active_selection", _ACTIVE.selection, list(active.SELECTIONS), "Active "
                  "querying's choice: margin (class-balanced lowest proxy margin) or random.")
flags.DEFINE_integer("active_proxy_epochs", _ACTIVE.proxy_epochs, "Epochs of the proxy student "
                     "before each active round.")
flags.DEFINE_integer("active_labelled_images", _ACTIVE.labelled_images, "Synthetic images to "
                     "label, chosen in rounds from the pool (0: what --query_budget leaves).")
flags.DEFINE_string("active_assistant", _ACTIVE.assistant, "Under a --query_budget: a larger "
                    "architecture trained on the teacher-labelled images labels the rest of the "
                    "pool for the student, at no query; auto: the dataset's teacher architecture "
                    "(none with --images); empty: the rest is not used.")
flags.DEFINE_integer("active_assistant_epochs", _ACTIVE.assistant_epochs, "Epochs of the "
                     "teacher assistant.")
flags.DEFINE_enum("db3kd_search", _BOUNDARY.search,
                  list(boundary.SEARCHES), "DB3KD boundary search: bd, binary "
                  "searches along directions toward teacher-labelled images; mbd, bd then the "
                  "Sign-OPT refinement.")
flags.DEFINE_integer("db3kd_mbd_queries", _BOUNDARY.mbd_queries,
                     "DB3KD mbd: query budget per (image, class) pair.")
flags.DEFINE_integer("db3kd_mbd_directions", _BOUNDARY.mbd_directions,
                     "DB3KD mbd: random directions per sign-gradient "
                     "estimate (one query each).")
flags.DEFINE_integer("db3kd_directions", _BOUNDARY.num_directions,
                     "DB3KD: directions tried per (image, class) pair; 0: no search, one-hot top-1 labels.")
flags.DEFINE_float("db3kd_tolerance", _BOUNDARY.tolerance,
                   "DB3KD: binary-search tolerance on the boundary distance "
                   "(pixel scale [0, 1]).")
flags.DEFINE_float("db3kd_temperature", _BOUNDARY.temperature,
                   "DB3KD: T of the soft labels and of the student's KD term.")
flags.DEFINE_integer("db3kd_chunk_pairs", _BOUNDARY.chunk_pairs,
                     "DB3KD: (image, class) pairs searched together; each "
                     "chunk's state is persisted when it ends (a killed run loses at most one).")
flags.DEFINE_integer("zsdb3kd_per_class", _ZERO_SHOT.per_class, "ZSDB3KD: pseudo-samples per class.")
flags.DEFINE_integer("zsdb3kd_iterations", _ZERO_SHOT.iterations,
                     "ZSDB3KD: pushes away from the decision boundary.")
flags.DEFINE_float("zsdb3kd_step", _ZERO_SHOT.step,
                   "ZSDB3KD: first step of each push (halved while the label "
                   "flips).")
flags.DEFINE_enum("zsdb3kd_search", _ZERO_SHOT.search, zeroshot.SEARCHES,
                  "ZSDB3KD: how each push finds the nearest boundary: hopskipjump (HSJA's "
                  "normal estimate, warm-started from the last push) or sign_opt (the reference's).")
flags.DEFINE_integer("zsdb3kd_gradient_queries", _ZERO_SHOT.gradient_queries,
                     "ZSDB3KD hopskipjump: probes of the first normal estimate per sample (B0).")
flags.DEFINE_integer("zsdb3kd_search_iterations", _ZERO_SHOT.search_iterations,
                     "ZSDB3KD hopskipjump: HSJA iterations per push.")
flags.DEFINE_integer("zsdb3kd_fill_from", _ZERO_SHOT.fill_from,
                     "ZSDB3KD: noise samples a class needs before the rest of it is filled with "
                     "perturbed mixtures of its samples (0: noise only).")
flags.DEFINE_integer("zsdb3kd_queries", _ZERO_SHOT.queries,
                     "ZSDB3KD sign_opt: Sign-OPT queries per sample and iteration.")
flags.DEFINE_integer("zsdb3kd_init_directions", _ZERO_SHOT.init_directions,
                     "ZSDB3KD sign_opt: random initial directions per sample.")
flags.DEFINE_string("teacher_saved_model", None, "The teacher's SavedModel (a version directory or "
                    "a TF Serving base path), loaded in-process by --method=zskd.")
flags.DEFINE_integer("zskd_count", None, "ZSKD: Data Impressions in all; default: the paper's for "
                     "the dataset (24,000 MNIST, 48,000 Fashion-MNIST, 40,000 CIFAR-10); "
                     "zskd_blackbox: 12,000.")
flags.DEFINE_integer("zskd_iterations", None, "ZSKD: Adam steps per batch of impressions; default: "
                     "1,500 (the paper's); zskd_blackbox: 100.")
flags.DEFINE_integer("zskd_batch_size", _ZSKD.batch_size, "ZSKD: impressions optimised together.")
flags.DEFINE_float("zskd_learning_rate", None, "ZSKD: Adam's learning rate on pixels in [0, 1]; "
                   "default: 0.001 (the paper's); zskd_blackbox: 0.01.")
flags.DEFINE_float("zskd_temperature", _ZSKD.temperature,
                   "ZSKD: T of the impression search, targets and student.")
flags.DEFINE_string("zskd_final_layer", None, "ZSKD: the final layer's weight variable in the "
                    "SavedModel (e.g. logits/kernel); default: the one of shape [features, K].")
flags.DEFINE_integer("zskd_views", _ZSKD.views, "ZSKD: augmented views of each impression "
                     "(rotation, zoom, shift, mirror), each labelled by the teacher at T; 0: none.")
flags.DEFINE_integer("votes", _VOTES.votes, "A label-only teacher (FS-BBT family): noisy copies of "
                     "each image asked, its soft label the vote of the answers (k queries per "
                     "image); 0: one-hot labels.")
flags.DEFINE_float("vote_sigma", _VOTES.sigma, "The vote's Gaussian noise in pixel units "
                   "(pixels in [0, 1]).")
flags.DEFINE_integer("zskd_directions", _ZO.directions, "zskd_blackbox: antithetic direction pairs per "
                     "impression and step (2x this many queries each).")
flags.DEFINE_float("zskd_sigma", _ZO.sigma, "zskd_blackbox: probe radius in pixel units (pixels in "
                   "[0, 1]).")
flags.DEFINE_integer("zskd_resolution", _ZO.resolution,
                     "zskd_blackbox: directions drawn on this many cells per "
                     "side and upsampled (the image side: full dimension).")
flags.DEFINE_enum("student_architecture", _STUDENT.architecture,
                  ["auto", *models.MODELS], "Student; auto: the "
                  "paper's (LeNet-5-half; AlexNet-half for CIFAR-10; ResNet-20 for CIFAR-100).")
flags.DEFINE_string("student_model", None, "Your own uncompiled Keras model (PATH.keras: images "
                    "float32 [b, H, W, C] in [0, 1] -> logits [b, K]) as the student, instead of "
                    "--student_architecture.")


def _method_defaults(field: str) -> str:
    """A flag's default in words: the methods' own values and the library's, from
    ``Method.student_defaults`` and ``training.RECIPE`` (e.g. 'the method's, chosen on the
    validation split: fsbbt 25; 50 for the others')."""
    own = ", ".join(f"{m} {dict(methods.get(m).student_defaults)[field]}" for m in methods.names()
                    if field in dict(methods.get(m).student_defaults))
    library = training.RECIPE[field]
    return (f"the method's, chosen on the validation split: {own}; {library} for the others" if own
            else str(library))


flags.DEFINE_integer("student_epochs", None, "Student training epochs (default: "
                     f"{_method_defaults('epochs')}).")
flags.DEFINE_integer("student_steps", _STUDENT.steps, "Student optimizer steps in all, as whole "
                     "epochs (0: --student_epochs); a plan cut to --query_budget keeps the full "
                     "plan's steps.")
flags.DEFINE_integer("batch_size", _STUDENT.batch_size, "Student batch size per replica.")
flags.DEFINE_float("learning_rate", _STUDENT.learning_rate, "Student Adam learning rate.")
flags.DEFINE_enum("lr_schedule", _STUDENT.lr_schedule, list(training.LR_SCHEDULES), "Student "
                  "learning-rate schedule: cosine decay to 0 (chosen on the validation split) or "
                  "constant (the FS-BBT paper's).")
flags.DEFINE_float("weight_decay", _STUDENT.weight_decay, "Student Adam's decoupled weight decay "
                   "(0 disables).")
flags.DEFINE_float("ema_momentum", _STUDENT.ema_momentum, "Export an exponential moving average of "
                   "the student's weights with this momentum, warmed up over the first steps (0 "
                   "disables; only with --select=final).")
flags.DEFINE_enum("loss", _STUDENT.loss, list(training.LOSSES), "soft_ce: cross-entropy to the "
                  "teacher's probabilities (FS-BBT); kd: temperature-scaled KD.")
flags.DEFINE_float("temperature", _STUDENT.temperature, "Temperature for --loss=kd.")
flags.DEFINE_integer("steps_per_execution", _STUDENT.steps_per_execution, "Student training "
                     "steps per compiled call.")
flags.DEFINE_float("train_mixup_alpha", None, "Training-time MixUp α; 0 disables (default: "
                   f"{_method_defaults('mixup_alpha')}).")
flags.DEFINE_float("rotation_degrees", None, "Training-time random rotation up to ± this many "
                   f"degrees; 0 disables (default: {_method_defaults('rotation_degrees')}).")
flags.DEFINE_float("shift_fraction", None, "Training-time random shifts up to ± this fraction of "
                   f"height and width; 0 disables (default: {_method_defaults('shift_fraction')}).")
flags.DEFINE_bool("horizontal_flip", _STUDENT.horizontal_flip, "Mirror training images left-right "
                  "at random (clothing and natural images; not digits).")
flags.DEFINE_enum("select", None, list(training.SELECTIONS), "Which student weights are exported: "
                  "final (the last epoch's) or validation (the epoch of best accuracy on the "
                  "validation split; with none, a held-out slice of the transfer set); never the "
                  f"test split (default: {_method_defaults('select')}).")
flags.DEFINE_integer("batchnorm_images", _STUDENT.batchnorm_images, "After training, re-estimate "
                     "the student's BatchNorm statistics over up to this many transfer-set images: "
                     f"0 (keep what training's momentum left) or at least "
                     f"{training.BATCHNORM_MIN_IMAGES}.")
flags.DEFINE_enum("mixed_precision", _STUDENT.mixed_precision, list(training.PRECISIONS),
                  "Student dtype policy: float32, or mixed_float16 (GPUs; with loss scaling) / "
                  "mixed_bfloat16 (TPUs, recent GPUs and CPUs): float32 logits and variables; the "
                  "exported student is float32.")
flags.DEFINE_bool("jit_compile", _STUDENT.jit_compile, "Compile the student's training step with "
                  "XLA; default: Keras' auto (on a GPU or TPU, not on a CPU-only machine).")
flags.DEFINE_enum("lr_scaling", _STUDENT.lr_scaling, list(training.LR_SCALINGS), "How "
                  f"--learning_rate (meant for a global batch of {training.LR_REFERENCE_BATCH}) "
                  "follows the global batch (--batch_size x replicas): sqrt (Adam's square-root "
                  "rule), linear, or none.")
flags.DEFINE_enum("strategy", training.STRATEGIES[0], list(training.STRATEGIES), "mirrored: all local GPUs "
                  "(one replica: TensorFlow's default strategy, with one GPU or none); multi_worker: "
                  "MultiWorkerMirroredStrategy from "
                  "TF_CONFIG (run the same command on every worker; the chief exports).")
flags.DEFINE_float("cluster_startup_timeout", training.CLUSTER_STARTUP_TIMEOUT_S, "With "
                   "--strategy=multi_worker: fail with one line if the cluster's other tasks have "
                   "not all started within this many seconds.")
flags.DEFINE_enum("training_loop", _STUDENT.loop, list(training.LOOPS), "Student training loop: fit (Keras "
                  "fit with callbacks), custom (strategy.run with tf.train.CheckpointManager), auto: "
                  "custom under multi_worker, else fit.")
flags.DEFINE_integer("checkpoint_steps", _STUDENT.checkpoint_steps,
                     "Also checkpoint the student every this many steps "
                     "(0: every epoch only). A rerun of the same command resumes.")
flags.DEFINE_integer("eval_examples", _CONFIG.eval_examples,
                     "Test images for the accuracies; 0: the full test set.")
flags.DEFINE_list("compress", list(_CONFIG.compress), "Compressed student variants exported and "
                  "measured besides float32 (float16, int8); empty for none.")
flags.DEFINE_bool("evaluate_teacher", _CONFIG.evaluate_teacher,
                  "Also measure the teacher's test accuracy over gRPC.")
flags.DEFINE_integer("verbose", None, "Keras verbosity: 0 silent, 1 progress bars, 2 one line per "
                     "epoch. Default: 1 on a terminal, 2 when the output goes to a file or pipe.")

FLAGS = flags.FLAGS

# The one validation layer for flags: absl checks these when the command line is parsed, before any
# data is read, teacher queried or model trained, and prints one line naming flag, value and bound.
_AT_LEAST = {"zskd_count": 1, "zskd_iterations": 1, "zskd_batch_size": 1, "zskd_directions": 1,
             "zskd_resolution": 1,
             "db3kd_directions": 0, "db3kd_chunk_pairs": 1, "db3kd_mbd_queries": 1,
             "db3kd_mbd_directions": 1,
             "zsdb3kd_per_class": 1, "zsdb3kd_iterations": 0, "zsdb3kd_queries": 1,
             "zsdb3kd_init_directions": 1, "zsdb3kd_gradient_queries": 1,
             "zsdb3kd_search_iterations": 1, "zsdb3kd_fill_from": 0, "num_shots": 0,
             "num_validation": 0, "image_height": 1,
             "image_width": 1, "cvae_working_size": 0, "teacher_version": 1,
             "teacher_max_in_flight": 1, "teacher_max_attempts": 1, "query_budget": 0,
             "teacher_epochs": 1, "num_mixup": 0,
             "num_cvae": 0, "cvae_epochs": 1, "cvae_latent_dim": 1, "student_epochs": 1,
             "batch_size": 1, "steps_per_execution": 1, "checkpoint_steps": 0, "eval_examples": 0,
             "batchnorm_images": 0, "zskd_views": 0, "votes": 0, "active_rounds": 0,
             "active_proxy_epochs": 1, "active_labelled_images": 0,
             "active_assistant_epochs": 1}
_POSITIVE = ("cluster_startup_timeout", "zskd_learning_rate", "vote_sigma", "zskd_temperature", "zskd_sigma",
             "zsdb3kd_step", "db3kd_tolerance", "db3kd_temperature", "teacher_input_scale", "teacher_timeout",
             "mixup_alpha", "learning_rate", "temperature")
_NOTES = {"num_shots": " (0: all, with --images)"}
for _name, _low in _AT_LEAST.items():
    flags.register_validator(_name, lambda v, low=_low: v is None or v >= low,
                             message=f"--{_name} must be >= {_low}{_NOTES.get(_name, '')}")
for _name in _POSITIVE:
    flags.register_validator(_name, lambda v: v is None or v > 0, message=f"--{_name} must be > 0")
flags.register_validator("teacher_class_map",
                         lambda v: v is None or (len(v) > 0 and all(c.isdigit() for c in v)),
                         message="--teacher_class_map must be comma-separated class indices >= 0")
flags.register_validator("verbose", lambda v: v is None or v in (0, 1, 2),
                         message="--verbose must be 0, 1 or 2")
flags.register_validator("train_mixup_alpha", lambda v: v is None or v >= 0,
                         message="--train_mixup_alpha must be >= 0 (0 disables)")
flags.register_validator("rotation_degrees", lambda v: v is None or 0 <= v <= 180,
                         message="--rotation_degrees must be in [0, 180] (0 disables)")
flags.register_validator("shift_fraction", lambda v: v is None or 0 <= v < 1,
                         message="--shift_fraction must be in [0, 1) (0 disables)")
flags.register_validator("weight_decay", lambda v: v >= 0,
                         message="--weight_decay must be >= 0 (0 disables)")
flags.register_validator("ema_momentum", lambda v: 0 <= v < 1,
                         message="--ema_momentum must be in [0, 1) (0 disables)")


def _valid_target(value: str) -> bool:
    try:
        return not value or bool(client.check_target(value))
    except ValueError:
        return False


flags.register_validator("teacher", _valid_target,
                         message="--teacher must be host:port (gRPC) or http(s)://host:port (REST) "
                         "with a port in 1..65535, or empty")


def teacher_config_from_flags() -> teacher.TeacherConfig:
    return teacher.TeacherConfig(
        target=FLAGS.teacher, model_name=FLAGS.teacher_model_name, version=FLAGS.teacher_version,
        version_label=FLAGS.teacher_version_label, signature_name=FLAGS.teacher_signature,
        input_key=FLAGS.teacher_input_key, input_dtype=FLAGS.teacher_input_dtype,
        input_scale=FLAGS.teacher_input_scale, output_key=FLAGS.teacher_output_key,
        output_kind=FLAGS.teacher_output, label_only=FLAGS.teacher_label_only,
        class_map=(None if FLAGS.teacher_class_map is None
                   else tuple(int(c) for c in FLAGS.teacher_class_map)),
        timeout_s=FLAGS.teacher_timeout, max_in_flight=FLAGS.teacher_max_in_flight,
        retry=client.RetryPolicy(max_attempts=FLAGS.teacher_max_attempts),
        tls_ca_file=FLAGS.teacher_tls_ca, tls_cert_file=FLAGS.teacher_tls_cert,
        tls_key_file=FLAGS.teacher_tls_key, tls_server_name=FLAGS.teacher_tls_server_name,
        auth_token_file=FLAGS.teacher_auth_token_file,
        auth_token_env=FLAGS.teacher_auth_token_env, query_budget=FLAGS.query_budget)


def images_config_from_flags() -> images.ImageSourceConfig | None:
    if FLAGS.images is None:
        return None
    return images.ImageSourceConfig(
        path=FLAGS.images, eval_path=FLAGS.eval_images, image_key=FLAGS.image_key,
        height=FLAGS.image_height, width=FLAGS.image_width,
        channels=None if FLAGS.image_channels is None else int(FLAGS.image_channels),
        class_names=FLAGS.class_names)


def check_data_flags() -> None:
    """Refuses flags that only make sense with --images (a named dataset has its own splits)."""
    if FLAGS.images is None and FLAGS.eval_images:
        raise ValueError("--eval_images needs --images (a named dataset has its test split)")
    if FLAGS.images is None and FLAGS.num_shots == 0:
        raise ValueError("--num_shots=0 (all images) needs --images")


def config_from_flags() -> pipeline.DistillConfig:
    """The flags as a :class:`tfkd.pipeline.DistillConfig`; a flag left out stays unset (None,
    ``auto``) so that :meth:`~tfkd.pipeline.DistillConfig.resolved` gives it the library's default."""
    check_data_flags()
    return config_from_named_flags().with_settings(json_flag("params_override") or {})


def config_from_named_flags() -> pipeline.DistillConfig:
    return pipeline.DistillConfig(
        workdir=FLAGS.workdir, method=FLAGS.method, dataset=FLAGS.dataset,
        data_dir=FLAGS.data_dir, images=images_config_from_flags(), seed=FLAGS.seed,
        num_shots=FLAGS.num_shots, num_validation=FLAGS.num_validation,
        teacher=teacher_config_from_flags(),
        teacher_train=pipeline.TeacherTrainConfig(architecture=FLAGS.teacher_architecture,
                                                  epochs=FLAGS.teacher_epochs),
        mixup=synthesis.MixUpConfig(num_images=FLAGS.num_mixup, alpha=FLAGS.mixup_alpha),
        cvae=synthesis.CVAEConfig(num_images=FLAGS.num_cvae, epochs=FLAGS.cvae_epochs,
                                  latent_dim=FLAGS.cvae_latent_dim,
                                  architecture=FLAGS.cvae_architecture,
                                  working_size=FLAGS.cvae_working_size),
        student=student_config_from_flags(),
        db3kd=boundary.BoundaryConfig(search=FLAGS.db3kd_search,
                                      num_directions=FLAGS.db3kd_directions,
                                      tolerance=FLAGS.db3kd_tolerance,
                                      temperature=FLAGS.db3kd_temperature,
                                      mbd_queries=FLAGS.db3kd_mbd_queries,
                                      mbd_directions=FLAGS.db3kd_mbd_directions,
                                      chunk_pairs=FLAGS.db3kd_chunk_pairs),
        zsdb3kd=zeroshot.ZeroShotConfig(
            per_class=FLAGS.zsdb3kd_per_class, iterations=FLAGS.zsdb3kd_iterations,
            step=FLAGS.zsdb3kd_step, search=FLAGS.zsdb3kd_search,
            gradient_queries=FLAGS.zsdb3kd_gradient_queries,
            search_iterations=FLAGS.zsdb3kd_search_iterations, fill_from=FLAGS.zsdb3kd_fill_from,
            queries=FLAGS.zsdb3kd_queries, init_directions=FLAGS.zsdb3kd_init_directions),
        zskd=impressions.ImpressionConfig(
            count=FLAGS.zskd_count, iterations=FLAGS.zskd_iterations,
            batch_size=FLAGS.zskd_batch_size, learning_rate=FLAGS.zskd_learning_rate,
            temperature=FLAGS.zskd_temperature, final_layer=FLAGS.zskd_final_layer,
            views=FLAGS.zskd_views),
        zskd_blackbox=impressions.ZerothOrderConfig(
            directions=FLAGS.zskd_directions, sigma=FLAGS.zskd_sigma,
            resolution=FLAGS.zskd_resolution),
        votes=votes.VoteConfig(votes=FLAGS.votes, sigma=FLAGS.vote_sigma),
        active=active.ActiveConfig(rounds=FLAGS.active_rounds, selection=FLAGS.active_selection,
                                   proxy_epochs=FLAGS.active_proxy_epochs,
                                   labelled_images=FLAGS.active_labelled_images,
                                   assistant=FLAGS.active_assistant,
                                   assistant_epochs=FLAGS.active_assistant_epochs),
        teacher_saved_model=FLAGS.teacher_saved_model, method_config=json_flag("method_settings"),
        eval_examples=FLAGS.eval_examples, evaluate_teacher=FLAGS.evaluate_teacher,
        compress=tuple(FLAGS.compress), verbose=FLAGS.verbose,
        outputs=vertex.OutputDirs.from_environ(os.environ))  # Vertex AI's AIP_* directories.


def json_flag(name: str) -> dict | None:
    """A flag holding a JSON object, as a dict (None when not given). Raises ValueError."""
    text = FLAGS[name].value
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--{name}: expected a JSON object, got {text!r} ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"--{name}: expected a JSON object, got {text!r}")
    return value


def student_config_from_flags() -> training.StudentConfig:
    return training.StudentConfig(
        architecture=FLAGS.student_model or FLAGS.student_architecture, steps=FLAGS.student_steps,
        epochs=FLAGS.student_epochs, batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate, lr_schedule=FLAGS.lr_schedule, loss=FLAGS.loss,
        temperature=FLAGS.temperature, mixup_alpha=FLAGS.train_mixup_alpha,
        rotation_degrees=FLAGS.rotation_degrees, shift_fraction=FLAGS.shift_fraction,
        horizontal_flip=FLAGS.horizontal_flip, weight_decay=FLAGS.weight_decay,
        ema_momentum=FLAGS.ema_momentum, checkpoint_steps=FLAGS.checkpoint_steps,
        loop=FLAGS.training_loop, steps_per_execution=FLAGS.steps_per_execution,
        batchnorm_images=FLAGS.batchnorm_images, select=FLAGS.select,
        mixed_precision=FLAGS.mixed_precision, jit_compile=FLAGS.jit_compile,
        lr_scaling=FLAGS.lr_scaling)


def flag_values() -> dict:
    """This launcher's flags, name -> value (the run writes them to ``<workdir>/flags.json`` once
    it holds the work dir's lock)."""
    module = FLAGS.find_module_defining_flag("workdir")
    return {f.name: f.value for f in FLAGS.get_key_flags_for_module(module)}


# The settings the library's messages name, and this command's flag for each: the library names
# settings (it has no flags), the command shows users the flag beside them.
SETTING_FLAGS = {
    "teacher.target": "teacher", "teacher.output_key": "teacher_output_key",
    "teacher.output_kind": "teacher_output",
    "teacher.class_map": "teacher_class_map", "teacher_saved_model": "teacher_saved_model",
    "tls_ca_file": "teacher_tls_ca", "images.eval_path": "eval_images",
    "images.class_names": "class_names", "images.height": "image_height",
    "images.width": "image_width", "images.channels": "image_channels",
    "images.image_key": "image_key", "data_dir": "data_dir", "zskd.final_layer": "zskd_final_layer",
    "num_validation": "num_validation", "num_shots": "num_shots", "workdir": "workdir",
    "teacher.query_budget": "query_budget", "evaluate_teacher": "evaluate_teacher",
    "eval_examples": "eval_examples",
}


def with_flag_names(message: str) -> str:
    """A library message with each setting it names followed by this command's flag (not a
    ``settings['...']`` key: that one came from --params_override)."""
    for setting, flag in SETTING_FLAGS.items():
        message = re.sub(rf"(?<![\w.-])(?<!\['){re.escape(setting)}(?![\w.=])",
                         f"{setting} (--{flag})", message)
    return message


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:  # First: a multi-worker strategy must exist before any other TensorFlow work.
        strategy = training.make_strategy(FLAGS.strategy,
                                         startup_timeout_s=FLAGS.cluster_startup_timeout)
        methods.load_plugins(FLAGS.plugins)  # Their methods can then be named by --method.
        config = config_from_flags()
        config.validate()  # Resolves the defaults first; pipeline.run resolves the same way.
    except ValueError as e:  # ConfigError included: one line, before anything is read or sent.
        sys.exit(f"error: {with_flag_names(str(e))}")
    try:
        report = pipeline.run(config, strategy, flags=flag_values())
    except (errors.TfkdError, ValueError) as e:
        # Expected failures (and settings only the data can refuse, e.g. N not a multiple of the
        # classes) get one clear line, not a traceback from deep inside.
        sys.exit(f"error: {with_flag_names(str(e))}")
    logging.info("Report: %s/report.json", config.workdir)
    if report.role == "worker":
        print(f"worker done: trained {report.student_epochs} epochs with the chief", flush=True)
        return
    print(report_lib.format_table(report), flush=True)


def run():
    """The ``tfkd-distill`` command."""
    app.run(main)


if __name__ == "__main__":
    run()
