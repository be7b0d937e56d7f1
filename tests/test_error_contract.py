"""The error contract: every error tfkd raises on purpose is a :class:`tfkd.TfkdError` with one
line naming the input, what was expected and what came; a ``raise ValueError`` / ``raise
TypeError`` left in ``tfkd/`` is a programming error and says so on its line.

Each test provokes one user-facing kind with real parts (real files, a real SavedModel, a real
server) and no mocks."""

import os
import re
import socket
import struct

import grpc
import numpy as np
import pytest

import tfkd
from tfkd import data
from tfkd import distribute
from tfkd import errors
from tfkd import export
from tfkd import images as images_lib
from tfkd import methods
from tfkd import serving
from tfkd import student as student_lib
from tfkd import teacher_setup
from tfkd import workdir
from tfkd.methods.db3kd import boundary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _one_line(e: BaseException, *named: str) -> str:
    """Asserts ``e`` is a TfkdError whose message is one line naming each of ``named``."""
    message = str(e)
    assert isinstance(e, tfkd.TfkdError), f"{type(e).__name__}: {message}"
    assert "\n" not in message and message.strip(), message
    for name in named:
        assert name in message, (name, message)
    return message


def test_an_unknown_method_name_is_a_config_error_listing_the_methods():
    # Before the fix: a plain ValueError (not a TfkdError): "method='dfad': expected one of [...]".
    with pytest.raises(errors.ConfigError) as e:
        methods.get("dfad")
    _one_line(e.value, "method='dfad'", "fsbbt")
    # A second plug-in registering a name already taken is a setting clash, not a bug in tfkd.
    with pytest.raises(errors.ConfigError) as e:
        methods.register(methods.get("fsbbt"))
    _one_line(e.value, "'fsbbt'", "already registered")


def test_a_teacher_saved_model_dir_without_a_model_is_a_config_error(tmp_path):
    # Before the fix: a plain ValueError for a missing and for an empty directory.
    for path, found in ((str(tmp_path / "missing"), "no such directory"),
                        (str(tmp_path), "found neither")):
        with pytest.raises(errors.ConfigError) as e:
            teacher_setup.saved_model_dir(path)
        _one_line(e.value, f"teacher_saved_model={path!r}", "saved_model.pb", found)


def test_a_teacher_saved_model_that_does_not_load_is_a_config_error(tmp_path):
    # Before the fix: tf.saved_model.load's OSError ("Cannot parse file ...") escaped from a
    # damaged saved_model.pb.
    from tfkd.methods.zskd import whitebox

    version = tmp_path / "1"
    version.mkdir()
    (version / "saved_model.pb").write_bytes(b"not a SavedModel")
    path = teacher_setup.saved_model_dir(str(tmp_path))
    assert path == str(version)
    with pytest.raises(errors.ConfigError) as e:
        whitebox.SavedModelTeacher(path)
    _one_line(e.value, f"{path!r}", "does not load")


def test_a_model_file_that_does_not_load_is_a_config_error(tmp_path):
    from tfkd.student import models

    # Before the fix: Keras' plain ValueError "File not found: ..." for a .keras file that is
    # there but no Keras model.
    garbage = tmp_path / "student.keras"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(errors.ConfigError) as e:
        models.build_model(str(garbage), (28, 28, 1), 10)
    _one_line(e.value, f"student.architecture={str(garbage)!r}", "not a Keras model file")
    # Before the fix: tf.saved_model.load's OSError for a label-only copy of no SavedModel.
    with pytest.raises(errors.ConfigError) as e:
        export.export_label_only(str(tmp_path), str(tmp_path / "label_only"))
    _one_line(e.value, f"version_dir={str(tmp_path)!r}", "does not load")
    # Before the fix: a plain ValueError for a SavedModel without the classes output.
    version = export.export_classifier(models.build_model("lenet5", (28, 28, 1), 10),
                                       str(tmp_path / "probabilities"), outputs=("probabilities",))
    with pytest.raises(errors.ConfigError) as e:
        export.export_label_only(version, str(tmp_path / "label_only"))
    _one_line(e.value, f"version_dir={version!r}", "'classes' output", "['probabilities']")
    assert not os.path.exists(tmp_path / "label_only")


def test_deploying_what_is_no_export_or_to_a_bad_target_is_a_config_error(teacher_base, tmp_path):
    version_dir = os.path.join(teacher_base, "1")
    # Before the fix: a plain ValueError for a source without saved_model.pb or model.tflite.
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(errors.ConfigError) as e:
        export.deploy_version(str(empty), str(tmp_path / "served"))
    _one_line(e.value, f"version_dir={str(empty)!r}", "saved_model.pb")
    # Before the fix: a plain ValueError for a target that is a file.
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(errors.ConfigError) as e:
        export.deploy_version(version_dir, str(a_file))
    _one_line(e.value, f"model_base_path={str(a_file)!r}", "is a file")
    # Before the fix: a plain ValueError for a version below the newest there.
    served = str(tmp_path / "served")
    assert export.deploy_version(version_dir, served, version=3) == os.path.join(served, "3")
    with pytest.raises(errors.ConfigError) as e:
        export.deploy_version(version_dir, served, version=2)
    _one_line(e.value, "version=2", "newest version there (3)")
    # Before the fix: TensorFlow's NotFoundError ("/proc/...; No such file or directory", not a
    # TfkdError) for a target that cannot be written (a pseudo file system).
    target = "/proc/tfkd-error-contract"
    with pytest.raises(errors.ConfigError) as e:
        export.deploy_version(version_dir, target)
    _one_line(e.value, f"model_base_path={target!r}", "cannot write")
    assert not os.path.exists(target)


def _idx(path, type_code: int, dims: tuple) -> None:
    header = bytes([0, 0, type_code, len(dims)]) + struct.pack(">" + "I" * len(dims), *dims)
    with open(path, "wb") as f:
        f.write(header + bytes(int(np.prod(dims)) * (4 if type_code == 0x0C else 1)))


def test_a_dataset_that_cannot_be_read_is_a_dataset_unavailable_error(tmp_path):
    # Before the fix: already a DatasetUnavailableError for a data_dir without the files (kept).
    with pytest.raises(errors.DatasetUnavailableError) as e:
        data.load_dataset("mnist", data_dir=str(tmp_path))
    _one_line(e.value, f"data_dir={str(tmp_path)!r}", "train-images-idx3-ubyte")
    # Before the fix: a plain ValueError for IDX files of int32 (type 0x0c) values.
    for key, stem in data._IDX_FILES.items():
        dims = (2, 28, 28) if key.startswith("x") else (2,)
        _idx(tmp_path / stem, 0x0C if key == "x_train" else 0x08, dims)
    with pytest.raises(errors.DatasetUnavailableError) as e:
        data.load_dataset("mnist", data_dir=str(tmp_path))
    _one_line(e.value, "train-images-idx3-ubyte", "type 0x08", "0xc")
    # Before the fix: a plain ValueError for a dataset name tfkd does not know.
    with pytest.raises(errors.ConfigError) as e:
        data.load_dataset("imagenet")
    _one_line(e.value, "dataset='imagenet'", "fashion_mnist")


def test_an_image_folder_without_images_or_names_is_an_image_source_error(tmp_path):
    # Before the fix: already an ImageSourceError for a folder with no image file (kept).
    (tmp_path / "notes.txt").write_text("no image here")
    with pytest.raises(errors.ImageSourceError) as e:
        images_lib.load_images(str(tmp_path), (28, 28, 1))
    _one_line(e.value, f"images={str(tmp_path)!r}", "found none")
    # Before the fix: a plain ValueError for a class-name file that is not there.
    names = str(tmp_path / "names.txt")
    with pytest.raises(errors.ImageSourceError) as e:
        images_lib.ImageSourceConfig(str(tmp_path), class_names=names).validate()
    _one_line(e.value, f"class_names={names!r}", "no such file")
    # Before the fix: a plain ValueError for a channel count images cannot have.
    with pytest.raises(errors.ConfigError) as e:
        images_lib.ImageSourceConfig(str(tmp_path), channels=2).validate()
    _one_line(e.value, "images.channels=2", "1 or 3")


def test_a_busy_or_foreign_work_dir_is_a_workdir_error(tmp_path):
    # Before the fix: already a WorkdirError for a work dir another run holds (kept).
    with workdir.lock(str(tmp_path)):
        with pytest.raises(errors.WorkdirError) as e:
            with workdir.lock(str(tmp_path)):
                pass
    _one_line(e.value, f"workdir={str(tmp_path)!r}", "in use")
    # Before the fix: a plain ValueError for a boundary-search state of another search in the
    # work dir; the teacher is never asked.
    state = str(tmp_path / "db3kd-search.npz")
    np.savez(state, best=np.zeros(3), best_direction=np.zeros(3, np.int64))
    images = np.zeros((2, 4, 4, 1), np.float32)
    asked = []
    with pytest.raises(errors.WorkdirError) as e:
        boundary.boundary_distances(images, np.array([0, 1]), images, np.array([0, 1]), 2,
                                    lambda x, stage: asked.append(len(x)) or np.zeros(len(x)),
                                    boundary.BoundaryConfig(), state_path=state)
    _one_line(e.value, state, "not the state of this search")
    assert asked == []


def test_the_model_server_refuses_with_a_serving_error_and_its_settings_with_config_errors(
        server, teacher_base):
    from tensorflow_serving.apis import model_pb2

    # Before the fix: already a ServingError (a TfkdError since 94cf120) with TF Serving's code.
    with pytest.raises(errors.ServingError) as e:
        server.registry.resolve(model_pb2.ModelSpec(name="nope"))
    _one_line(e.value, "nope")
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    # Before the fix: a plain ValueError for a setting out of range.
    with pytest.raises(errors.ConfigError) as e:
        serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], max_workers=0)
    _one_line(e.value, "max_workers=0", "> 0")
    # Before the fix: a plain ValueError for two models of one name.
    with pytest.raises(errors.ConfigError) as e:
        serving.ModelServer([serving.ModelConfig("t", teacher_base)] * 2)
    _one_line(e.value, "duplicate", "'t'")
    # Before the fix: a plain RuntimeError for a port another process listens on.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], port=port,
                                    host="127.0.0.1", poll_seconds=0)
        with pytest.raises(errors.ConfigError) as e:
            other.start()
        other.stop()
    _one_line(e.value, f"port={port}", "cannot bind")
    # Before the fix: OSError "[Errno 98] Address already in use" (naming no port) for a REST
    # port another process listens on, and the gRPC port of the failed start stayed bound.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = serving.ModelServer([serving.ModelConfig("teacher", teacher_base)], port=0,
                                    rest_api_port=port, host="127.0.0.1", poll_seconds=0)
        with pytest.raises(errors.ConfigError) as e:
            other.start()
    _one_line(e.value, f"rest_api_port={port}", "cannot bind")
    with socket.socket() as probe:  # The gRPC port the failed start had bound is free again.
        probe.bind(("127.0.0.1", other.port))
    # Before the fix: a plain ValueError for a model config file that is no ModelServerConfig
    # text proto.
    path = os.path.join(os.path.dirname(teacher_base), "bad.config")
    with open(path, "w") as f:
        f.write("model_config_list {\n  config { nonsense: 1 }\n}\n")
    with pytest.raises(errors.ConfigError) as e:
        serving.parse_model_config_file(path)
    _one_line(e.value, f"model_config_file={path!r}", "not a ModelServerConfig text proto")
    # Before the fix: TensorFlow's NotFoundError for a missing file, and a ValueError naming the
    # path but not the setting for one that is not text.
    missing = path + ".missing"
    with pytest.raises(errors.ConfigError) as e:
        serving.parse_model_config_file(missing)
    _one_line(e.value, f"model_config_file={missing!r}", "cannot read it")
    with open(path, "wb") as f:
        f.write(b"\x00\xffnot { a proto")
    with pytest.raises(errors.ConfigError) as e:
        serving.parse_model_config_file(path)
    _one_line(e.value, f"model_config_file={path!r}", "not UTF-8 text")


def test_a_training_setting_only_a_run_can_refuse_is_a_config_error():
    # Before the fix: a plain ValueError for a TF_CONFIG that is not JSON, an unknown strategy
    # and an unknown loss.
    with pytest.raises(errors.ConfigError) as e:
        distribute.parse_tf_config("{cluster")
    _one_line(e.value, "TF_CONFIG", "not JSON")
    with pytest.raises(errors.ConfigError) as e:
        distribute.make_strategy("tpu")
    _one_line(e.value, "strategy='tpu'", "expected one of")
    with pytest.raises(errors.ConfigError) as e:
        student_lib.make_loss("hinge", 4.0)
    _one_line(e.value, "loss='hinge'", "expected one of")


RAISE = re.compile(r"\braise (ValueError|TypeError)\b")


def test_every_raise_valueerror_in_tfkd_is_a_commented_programming_error():
    """A ``raise ValueError`` / ``raise TypeError`` in ``tfkd/`` is a programming error (a caller
    inside tfkd passed what no user input can cause) and says so on its own line; every error a
    user can cause is a TfkdError."""
    bare = []
    for root, _, files in os.walk(os.path.join(REPO, "tfkd")):
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            with open(path) as f:
                for number, line in enumerate(f, 1):
                    if RAISE.search(line) and "# Programming error" not in line:
                        bare.append(f"{os.path.relpath(path, REPO)}:{number}: {line.strip()}")
    assert not bare, "\n".join(bare)
