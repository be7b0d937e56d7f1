r"""Mutation check, run by hand: deliberate small breakages of tfkd, each against the tests that must
catch it. Not collected by pytest (no ``test_`` prefix).

For each mutation the tracked files are copied to a temporary directory, the breakage is applied
there (every ``old`` must occur exactly once), and the named tests run on the copy; the mutation is
*caught* when they fail. The checkout itself is never modified.

  python tests/mutation_check.py                 # all mutations; a table on stdout
  python tests/mutation_check.py permuted_soft_labels token_at_info
  .ci/kfp-venv/bin/python tests/mutation_check.py kfp_evaluate_unserved   # needs the kfp extra
"""

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    edits: tuple  # ((path, old, new), ...)
    tests: tuple  # pytest node ids that must fail


_AVERAGING = "tests/test_distill.py::test_weight_averaging_and_decay_change_the_exported_weights_as_defined"
MUTATIONS = [
    Mutation("unreadable_files_uncounted", "files that fail to decode are dropped without a count",
             (("tfkd/images.py", "skipped = tuple(names[i] for i in np.setdiff1d(indices, got))",
               "skipped = ()"),),
             ("tests/test_images.py::test_a_folder_is_read_at_the_asked_size_with_unreadable_files_counted",)),
    Mutation("fidelity_against_itself", "the student's fidelity compares its top-1 with itself",
             (("tfkd/evaluation.py", "else float(np.mean(top1 == teacher_top1))),",
               "else float(np.mean(top1 == top1))),"),),
             ("tests/test_images.py::test_distill_from_a_png_folder_into_a_keras_applications_student",)),
    Mutation("classify_vocabulary_shifted", "the classify signature's names are off by one class",
             (("tfkd/export/saved_model.py",
               "names = self.labels.lookup(tf.range(tf.shape(scores)[1], dtype=tf.int64))",
               "names = self.labels.lookup(tf.range(1, tf.shape(scores)[1] + 1, dtype=tf.int64))"),),
             ("tests/test_classify.py::test_raw_classify_request_returns_class_names_and_scores",)),
    Mutation("ram_export_renamed", "a non-local export version is renamed like a local one",
             (("tfkd/fs.py", "    if is_local(source):\n        os.rename(source, target)",
               "    if True:\n        gfile.rename(source, target)"),),
             ("tests/test_remote_workdir.py",)),
    Mutation("permuted_soft_labels", "the student trains on the soft labels shuffled across images",
             (("tfkd/pipeline.py", "            images, targets, student_config, config.seed,",
               "            images, targets[np.random.default_rng(1).permutation("
               "len(images))], student_config, config.seed,"),),
             ("tests/test_pipeline.py::test_launch_distill_end_to_end",
              "tests/test_resume.py::test_killed_training_resumes_to_the_same_epochs")),
    Mutation("cvae_on_true_labels", "the CVAE is conditioned on the true labels of the few shots",
             (("tfkd/pipeline.py", "few_shot_labels=labels if method.reads_true_labels else None",
               "few_shot_labels=labels"),
              ("tfkd/methods/fsbbt.py", "self.cvae_images(ctx, real.argmax(axis=1), cvae_config)",
               "self.cvae_images(ctx, ctx.few_shot_labels, cvae_config)")),
             ("tests/test_pipeline.py::test_methods_never_see_the_true_labels[cvae]",)),
    Mutation("real_images_on_true_labels",
             "the real images are trained on their true one-hot labels (the stored set unchanged)",
             (("tfkd/pipeline.py", "    return transfer\n\n\nSELECTION_HOLDOUT",
               "    if method.name != 'student_alone':\n        transfer.targets[:len(shots)] = np.eye("
               "dataset.num_classes, dtype=np.float32)[labels]\n    return transfer\n\n\n"
               "SELECTION_HOLDOUT"),),
             ("tests/test_pipeline.py::test_methods_never_see_the_true_labels[standard_kd]",)),
    Mutation("token_at_info", "the auth token is logged at INFO when read",
             (("tfkd/teacher/transports/grpc.py",
               "        token = config_lib.read_secret(config.auth_token_file, config.auth_token_env)\n",
               "        token = config_lib.read_secret(config.auth_token_file, config.auth_token_env)\n"
               "        logging.info(\"auth token %s\", token)\n"),),
             ("tests/test_teacher_contract.py::test_authorization_header_from_file_or_env",)),
    Mutation("earlier_process_uncounted",
             "a new process ignores the queries earlier processes recorded in the work dir",
             (("tfkd/teacher/account.py", "        if fs.exists(self.path):",
               "        if False and fs.exists(self.path):"),),
             ("tests/test_resume.py::test_killed_training_resumes_to_the_same_epochs",)),
    Mutation("evaluation_uncounted", "the teacher's test evaluation is not charged to the account",
             (("tfkd/teacher_setup.py",
               "dataclasses.replace(teacher_config, label_only=False), ledger, account))",
               "dataclasses.replace(teacher_config, label_only=False), ledger))"),),
             ("tests/test_pipeline.py::test_launch_distill_end_to_end",)),
    Mutation("retries_uncounted", "a retried Predict is not charged again",
             (("tfkd/teacher/client.py", "before_retry=lambda: attempt(True))",
               "before_retry=None)"),),
             ("tests/test_faults.py",)),
    Mutation("workers_out_of_step", "the custom loop applies per-replica gradients scaled by the "
             "local batch (replicas no longer average the same update)",
             (("tfkd/student/loops.py", "loss = tf.nn.compute_average_loss(loss_fn(targets, logits),\n"
               "                                              global_batch_size=global_batch)",
               "loss = tf.reduce_mean(loss_fn(targets, logits)) * tf.cast(\n"
               "                tf.distribute.get_replica_context().replica_id_in_sync_group + 1, "
               "tf.float32)"),),
             ("tests/test_distributed.py",)),
    Mutation("workers_pay_twice", "every worker of a cluster asks the teacher about every image",
             (("tfkd/teacher/cluster.py", "        return slice(self.index * n // self.count, "
               "(self.index + 1) * n // self.count)", "        return slice(0, n)"),
              ("tfkd/teacher/cluster.py",
               "        if self.count == 1:\n            return mine\n        size",
               "        if True:\n            return mine\n        size")),
             ("tests/test_distributed.py::test_two_workers_stay_in_step_and_export_exactly_one_student",)),
    Mutation("fsbbt_epochs_not_adopted", "the launcher trains fsbbt's student the library's 50 epochs",
             (("tfkd/methods/fsbbt.py", "student_defaults=((\"epochs\", 25), ", "student_defaults=("),),
             ("tests/test_pipeline.py::test_launcher_student_epochs_default_is_the_methods",)),
    Mutation("fsbbt_augmentation_not_adopted", "fsbbt's student keeps the library's training-time "
             "MixUp", (("tfkd/methods/fsbbt.py", '("mixup_alpha", 0.0), ', ""),),
             ("tests/test_pipeline.py::test_launcher_student_epochs_default_is_the_methods",
              "tests/test_pipeline.py::test_launch_distill_end_to_end")),
    Mutation("nested_flags_dropped", "the launcher never passes a nested setting's flag on "
             "(--student_horizontal_flip, --mixup_alpha, ... parsed and dropped)",
             (("launch/distill.py", "for n, s in SETTINGS.items() if FLAGS[n].present}",
               "for n, s in SETTINGS.items() if FLAGS[n].present and '.' not in s.name}"),),
             ("tests/test_launcher_flags.py::test_every_setting_is_a_flag_whose_value_reaches_it",)),
    Mutation("flip_ignored", "StudentConfig.horizontal_flip is never applied",
             (("tfkd/student/input_pipeline.py", "        if config.horizontal_flip:", "        if False:"),),
             ("tests/test_distill.py::test_horizontal_flip_mirrors_about_half_the_images_and_keeps_their_labels",)),
    Mutation("flip_vertical", "the flip mirrors top-bottom instead of left-right",
             (("tfkd/student/input_pipeline.py", "tf.where(mirror, tf.reverse(images, [2]), images)",
               "tf.where(mirror, tf.reverse(images, [1]), images)"),),
             ("tests/test_distill.py::test_horizontal_flip_mirrors_about_half_the_images_and_keeps_their_labels",)),
    Mutation("ema_not_swapped_in_custom_loop", "the custom loop exports the training weights, not "
             "their average",
             (("tfkd/student/loops.py",
               "        optimizer.finalize_variable_values(student.trainable_variables)", "        pass"),),
             (_AVERAGING + "[custom]",)),
    Mutation("weight_decay_dropped", "the student's Adam ignores weight_decay",
             (("tfkd/student/loops.py", "weight_decay=config.weight_decay or None,", "weight_decay=None,"),),
             (_AVERAGING + "[fit]",)),
    # Issue 28.
    Mutation("active_choice_not_read_back", "a resumed run chooses its rounds again instead of "
             "reading the persisted choice",
             (("tfkd/active.py", "    stored = len(state.chosen)  # Rounds read back: resumed.\n",
               "    stored = len(state.chosen)  # Rounds read back: resumed.\n"
               "    del state.chosen[:], state.images[:], state.selections[:]\n"),),
             ("tests/test_active.py::test_killed_active_run_resumes_and_pays_no_answered_query_again",)),
    Mutation("active_plan_counts_answered", "the plan counts every chosen image again, answered "
             "or not",
             (("tfkd/methods/fsbbt.py", "        return ctx.teacher.missing(stored) + ctx.teacher.share(",
               "        return len(stored) + ctx.teacher.share("),),
             ("tests/test_active_budget.py::test_a_rerun_with_settings_that_choose_or_cost_nothing_pays_no_query_again",)),
    Mutation("active_margin_inverted", "the rounds ask about the images the proxy is surest of",
             (("tfkd/active.py", "picked = balanced_lowest(margins(probabilities),",
               "picked = balanced_lowest(-margins(probabilities),"),),
             ("tests/test_active.py::test_choice_is_the_proxys_least_certain_images_not_a_random_draw",)),
    Mutation("int8_not_quantized", "the int8 variant is a float LiteRT model",
             (("tfkd/export/litert.py", "        converter.optimizations = [tf.lite.Optimize.DEFAULT]\n", ""),
              ("tfkd/export/litert.py", "        converter.target_spec.supported_ops = "
               "[tf.lite.OpsSet.TFLITE_BUILTINS_INT8]\n", "")),
             ("tests/test_int8.py::test_int8_is_a_full_integer_model_over_three_times_smaller",)),
    Mutation("litert_classify_names_reversed", "the int8 servable's Classify names the classes in "
             "reverse",
             (("tfkd/export/litert.py", "classes = tf.tile(tf.constant(names)[None],",
               "classes = tf.tile(tf.constant(names[::-1])[None],"),),
             ("tests/test_int8.py::test_tfkd_server_answers_predict_and_classify_from_the_int8_student",)),
    Mutation("no_loss_scaling", "mixed_float16 trains without loss scaling",
             (("tfkd/student/loops.py", '    if config.mixed_precision == "mixed_float16":\n        return '
               'keras.optimizers.LossScaleOptimizer(adam)\n', ""),),
             ("tests/test_precision.py::test_mixed_float16_computes_in_float16_scales_the_loss_and_exports_float32",)),
    Mutation("mixed_student_exported", "the mixed-precision model itself is exported (float16 "
             "compute in the served student)",
             (("tfkd/student/loops.py",
               '    if config.mixed_precision == "float32":\n        return student\n    copy =',
               '    if True:\n        return student\n    copy ='),),
             ("tests/test_precision.py::test_mixed_float16_computes_in_float16_scales_the_loss_and_exports_float32",)),
    Mutation("lr_scaled_linearly", "the square-root rule scales the rate linearly",
             (("tfkd/student/config.py", 'factors = {"sqrt": ratio ** 0.5,', 'factors = {"sqrt": ratio,'),),
             ("tests/test_precision.py::test_learning_rate_follows_the_global_batch_by_the_stated_rule",)),
]


MUTATIONS += [
    Mutation("declared_size_unchecked", "the server decodes a tensor without comparing its declared "
             "shape with its content",
             (("tfkd/serving/signatures.py", "        if carried != count * per_value:",
               "        if False:"),
              ("tfkd/serving/signatures.py", "        if carried != count * itemsize:",
               "        if False:")),
             ("tests/test_hostile_requests.py::test_declared_shape_must_match_the_content",)),
    Mutation("workdir_unchecked", "the work dir's artifacts are not validated before reuse",
             (("tfkd/workdir.py", "    damaged = []\n    for pattern", "    return []\n    for pattern"),),
             ("tests/test_damaged_workdir.py",)),
    Mutation("no_lock", "two runs may use one work dir at once",
             (("tfkd/pipeline.py", "    with workdir_lib.lock(config.workdir):\n        if flags",
               "    if True:\n        if flags"),),
             ("tests/test_workdir_lies.py::test_a_busy_work_dir_is_refused",)),
    Mutation("class_count_unchecked", "a teacher of another class count is accepted",
             (("tfkd/teacher/teacher_client.py",
               "        elif declared is not None and declared != num_classes:",
               "        elif False:"),),
             ("tests/test_wrong_teacher.py",)),
]

MUTATIONS += [  # Issue 13.
    Mutation("budget_refused", "the FS-BBT family refuses a plan over the budget instead of cutting it",
             (("tfkd/methods/fsbbt.py", "        if self.counts(config) == (0, 0) or wanted <= room:",
               "        if True:"),),
             ("tests/test_pipeline.py::test_a_query_budget_cuts_the_synthetic_images_in_their_ratio",)),
    Mutation("budget_cut_drops_steps", "a plan cut to the budget trains the student for fewer steps",
             (("tfkd/pipeline.py", "    if student.steps == 0:  # The full plan's steps",
               "    if False:  # The full plan's steps"),),
             ("tests/test_pipeline.py::test_launcher_budget_equal_to_the_plan_and_no_secret_anywhere",)),
    # Issue 13 (this session): step-counted training streams its transfer set.
    Mutation("chunks_without_repeat", "a step-counted student's transfer set is not repeated",
             (("tfkd/student/loops.py", "seed, repeat=length.repeat)", "seed, repeat=False)"),),
             ("tests/test_distill.py::test_a_step_counted_student_streams_its_transfer_set_in_chunks",)),
    # Issue 14: batching, metrics, Vertex output dirs.
    Mutation("batch_rows_not_split", "every request of a batch gets the batch's first rows",
             (("tfkd/serving/batching.py", "{k: v[start:start + task.size] for k, v in outputs.items()}",
               "{k: v[:task.size] for k, v in outputs.items()}"),),
             ("tests/test_batching_and_metrics.py::test_concurrent_batch_1_requests_are_merged_with_identical_answers",)),
    Mutation("batch_closed_at_once", "every task closes its batch: nothing is merged",
             (("tfkd/serving/batching.py", "if queue.open_size == self.params.max_batch_size:",
               "if True:"),),
             ("tests/test_batching_and_metrics.py::test_concurrent_batch_1_requests_are_merged_with_identical_answers",)),
    Mutation("metrics_always_ok", "every request is counted with status OK",
             (("tfkd/serving/monitoring.py", 'status = ("OK" if exc is None else',
               'status = ("OK" if True else'),),
             ("tests/test_batching_and_metrics.py::test_metrics_endpoint_counts_requests_per_model_and_version",)),
    Mutation("aip_checkpoints_in_workdir", "AIP_CHECKPOINT_DIR is ignored",
             (("tfkd/pipeline.py", "config.outputs.checkpoint_dir or config.workdir,", "config.workdir,"),),
             ("tests/test_vertex.py::test_a_launcher_run_with_aip_variables_writes_its_outputs_there",)),
    Mutation("card_metrics_of_float32", "the model card gives every variant the float32 figures",
             (("tfkd/model_card.py", "metrics = _metrics(variants, eval_set)",
               "metrics = _metrics({k: variants['float32'] for k in variants}, eval_set)"),),
             ("tests/test_model_card.py::test_each_variants_card_figures_are_its_own",)),
    Mutation("kfp_evaluate_unserved", "the KFP evaluate step reports the artifact's metadata, not a "
             "served measurement",
             (("tfkd/kubeflow.py", "            accuracy = client_lib.accuracy(client, x, y)",
               "            accuracy = 0.5"),),
             ("tests/test_kubeflow.py::test_pipeline_runs_under_kfp_local_runner",)),
]

_AUDIT = "tests/test_audit.py::"
_BN_RUN = "tests/test_pipeline.py::test_a_batchnorm_student_is_served_as_trained_or_the_run_fails"
MUTATIONS += [  # Issue 25 §2: the audit's breakages the suite did not notice, and §3's checks.
    Mutation("soft_labels_as_argmax", "the student trains on one-hot argmax targets, not the "
             "teacher's soft labels",
             (("tfkd/pipeline.py", "            images, targets, student_config, config.seed,",
               "            images, np.eye(targets.shape[1], dtype=np.float32)["
               "targets.argmax(1)], student_config, config.seed,"),),
             (_AUDIT + "test_the_student_learns_the_teachers_soft_labels_not_their_argmax",)),
    Mutation("validation_in_pool", "the validation images stay in the training pool",
             (("tfkd/data.py", "    keep[held] = False\n", "    keep[held] = True\n"),),
             (_AUDIT + "test_validation_images_are_held_out_of_the_pool",)),
    Mutation("retry_budget_unchecked", "a retried request is charged without checking the budget",
             (("tfkd/teacher/account.py",
               "            self._check(n, f\"{stage} ({'retry' if retry else 'request'} of {n} images)\")",
               "            if not retry:\n                self._check(n, f\"{stage} (request of {n} "
               "images)\")"),),
             (_AUDIT + "test_a_retry_is_refused_when_it_would_exceed_the_budget",)),
    Mutation("ledger_without_version", "the ledger's key leaves out the teacher's version",
             (("tfkd/teacher/protocol.py", 'return (f"{self.origin}|{self.model_name}/{self.version}/',
               'return (f"{self.origin}|{self.model_name}/'),),
             (_AUDIT + "test_a_new_teacher_version_is_never_answered_from_the_old_versions_ledger",)),
    Mutation("ledger_without_origin", "the ledger's key leaves out which server and SavedModel "
             "answered", (("tfkd/teacher/protocol.py",
                           'return (f"{self.origin}|{self.model_name}',
                           'return (f"{self.model_name}'),),
             (_AUDIT + "test_another_server_with_the_same_model_name_is_never_answered_from_the_ledger",)),
    Mutation("db3kd_student_at_t1", "DB3KD's student trains at T = 1",
             (("tfkd/methods/db3kd.py", "                                   temperature=config.db3kd."
               "temperature)", "                                   temperature=1.0)"),),
             (_AUDIT + "test_methods_train_their_student_at_their_own_temperature",)),
    Mutation("zskd_student_at_t1", "ZSKD's student trains at T = 1 whatever zskd.student_temperature "
             "says (zskd_blackbox's is T = 20)",
             (("tfkd/methods/zskd.py", "                                   temperature=config.zskd."
               "student_temperature)", "                                   temperature=1.0)"),),
             (_AUDIT + "test_methods_train_their_student_at_their_own_temperature",)),
    Mutation("chief_shares_worker0_shard", "with a chief task, the chief and worker 0 label the "
             "same shard",
             (("tfkd/teacher/cluster.py", 'index = resolver.task_id if resolver.task_type == "chief" else '
               "chiefs + resolver.task_id", "index = resolver.task_id"),),
             (_AUDIT + "test_a_chief_and_its_workers_each_label_their_own_shard",)),
    Mutation("latency_in_seconds", "request latency recorded in seconds under a microseconds metric",
             (("tfkd/serving/monitoring.py", ".observe(seconds * 1e6)", ".observe(seconds)"),),
             (_AUDIT + "test_request_latency_is_recorded_in_microseconds",)),
    Mutation("card_teacher_accuracy_is_students", "the model card's teacher accuracy is the "
             "student's", (("tfkd/model_card.py", '"accuracy": report.get("teacher_accuracy")}',
                           '"accuracy": report.get("student_accuracy")}'),),
             (_AUDIT + "test_the_model_card_states_the_teachers_accuracy_and_the_work_dirs_queries",)),
    Mutation("card_queries_of_this_process", "the model card counts this process's queries, not "
             "the work dir's", (("tfkd/model_card.py", "report.get('teacher_queries_total') or 0:,}",
                                 "report.get('teacher_queries_sent') or 0:,}"),),
             (_AUDIT + "test_the_model_card_states_the_teachers_accuracy_and_the_work_dirs_queries",)),
    Mutation("list_flag_items_as_strings", "a list flag's items reach the setting as strings "
             "(--teacher_class_map=2,0,1 refused as a list of str)",
             (("launch/distill.py", 'return setting.items(FLAGS[name].value) if setting.kind == "list"',
               'return FLAGS[name].value if setting.kind == "list"'),),
             ("tests/test_launcher_flags.py::test_every_setting_is_a_flag_whose_value_reaches_it",)),
    Mutation("alias_dropped", "a short flag name users type (--num_mixup) is no longer an alias",
             (("launch/distill.py", '"num_mixup": "mixup_num_images",', ""),),
             ("tests/test_launcher_flags.py::test_the_short_names_users_type_still_set_their_settings",)),
    Mutation("batchnorm_not_reestimated", "the student's BatchNorm statistics are left as "
             "training's momentum left them",
             (("tfkd/student/loops.py",
               "        if config.batchnorm_images:\n            reestimate_batchnorm(",
               "        if False:\n            reestimate_batchnorm("),),
             ("tests/test_distill.py::test_a_short_schedule_batchnorm_student_serves_what_it_learned",
              _BN_RUN)),
    Mutation("served_agreement_unchecked", "a run whose exported student disagrees with its "
             "training ends without an error",
             (("tfkd/evaluation.py", "    if passed is not False:\n        return",
               "    if True:\n        return"),),
             (_BN_RUN,)),
    Mutation("flags_written_before_lock", "the launcher's flags.json is written before the lock "
             "is taken", (("tfkd/pipeline.py", "    with workdir_lib.lock(config.workdir):\n        if flags "
                           "is not None:\n            workdir_lib.write_json(",
                           "    if flags is not None:\n        fs.makedirs(config.workdir)\n        "
                           "workdir_lib.write_json(os.path.join(config.workdir, 'flags.json'), flags)\n"
                           "    with workdir_lib.lock(config.workdir):\n        if False:\n"
                           "            workdir_lib.write_json("),),
             ("tests/test_workdir_lies.py::test_a_refused_run_leaves_the_running_runs_record",)),
    Mutation("stored_answers_unvalidated", "stored answers are read back without checking they are "
             "probabilities (NaN passes)",
             (("tfkd/workdir.py", "        teacher.check_soft_labels(f[targets], targets)", "        pass"),),
             ("tests/test_damaged_workdir.py::test_nan_answers_in_a_stored_file_never_reach_the_student",)),
    Mutation("nan_loss_trains_on", "a NaN training loss does not stop the run",
             (("tfkd/student/loops.py", "    check_finite_loss(history)\n", ""),),
             ("tests/test_distill.py::test_a_non_finite_training_loss_stops_training_with_a_clear_error",)),
    Mutation("damaged_version_unloads", "a new version that fails to load unloads the healthy one",
             (("tfkd/serving/registry.py", "            if failed:  # The versions",
               "            if False:  #"),),
             (_AUDIT + "test_a_damaged_new_version_leaves_the_healthy_one_served",)),
    Mutation("failed_load_logged_every_poll", "a version that fails to load is tried and logged at "
             "every poll", (("tfkd/serving/registry.py",
                             "        if key in self._failed and self._failed[key] == stamp:",
                             "        if False:"),),
             (_AUDIT + "test_a_damaged_new_version_leaves_the_healthy_one_served",)),
    Mutation("metric_series_per_name", "every model name a client sends gets a metric series",
             (("tfkd/serving/monitoring.py", "        if self._known_models is not None and model_name "
               "not in self._known_models():", "        if False:"),),
             (_AUDIT + "test_unserved_model_names_share_one_metric_series_and_are_not_echoed_whole",)),
    Mutation("error_echoes_whole_name", "a NOT_FOUND answer echoes the whole model name",
             (("tfkd/serving/registry.py", "    if len(name) <= MAX_SHOWN_NAME:", "    if True:"),
              ("tfkd/errors.py", "        if len(message) > MAX_MESSAGE_CHARS:",
               "        if False:")),
             (_AUDIT + "test_unserved_model_names_share_one_metric_series_and_are_not_echoed_whole",)),
    Mutation("ci_on_machine_python", "CI runs the suite with the machine's python3, not its own "
             "environment", ((".ci/run", 'fresh_venv "$VENV"\n  echo "$VENV/bin/python"',
                              'echo "$(command -v python3)"'),),
             ("tests/test_ci.py::test_ci_creates_and_uses_its_own_isolated_venv",)),
    Mutation("optional_import_unguarded", "a test module imports pyyaml at the top",
             (("tests/test_kubeflow.py", "import tensorflow as tf\n",
               "import tensorflow as tf\nimport yaml  # noqa: F401\n"),),
             ("tests/test_ci.py::test_collection_survives_without_the_optional_packages",)),
]

_PATHS = "tests/test_unusable_paths.py::"
_INPUTS = "tests/test_hostile_inputs.py::"
_HOSTILE = "tests/test_hostile_requests.py::"
_CAUSES = "tests/test_connection_causes.py::"
MUTATIONS += [  # Issue 25 §4, the poor classes: one line or a bound, each with its test.
    Mutation("workdir_not_checked", "an unusable work dir is not checked before the run",
             (("tfkd/pipeline.py", "    workdir_lib.check_usable(config.workdir)\n", ""),),
             (_PATHS + "test_a_work_dir_that_is_a_file_or_a_pseudo_file_system_is_refused",)),
    Mutation("failed_write_leaves_temporary", "a write that fails leaves its temporary file",
             (("tfkd/fs.py", "            if gfile.exists(tmp):\n                gfile.remove(tmp)",
               "            pass"),),
             (_PATHS + "test_a_write_that_fails_leaves_nothing_at_its_final_name",)),
    Mutation("server_config_file_unnamed", "a missing server config file ends in a traceback",
             (("launch/serve.py", "    if not fs.exists(path) or fs.isdir(path):", "    if False:"),),
             (_PATHS + "test_the_server_names_a_config_file_it_cannot_use",)),
    Mutation("deploy_older_version_accepted", "tfkd-deploy accepts a version below the newest",
             (("tfkd/export/deploy.py", "and version < existing[-1] and not allow_older:", "and False:"),),
             (_PATHS + "test_deploy_refuses_a_base_path_that_is_a_file_and_a_version_that_would_never_"
              "serve",)),
    Mutation("evaluate_negative_examples", "tfkd-evaluate accepts --eval_examples=-5",
             (("launch/evaluate.py", 'flags.register_validator("eval_examples", lambda v: v >= 0,',
               'flags.register_validator("eval_examples", lambda v: True,'),),
             (_PATHS + "test_evaluate_refuses_a_negative_example_count",)),
    Mutation("connection_cause_dropped", "an unreachable teacher's error does not say why",
             (("tfkd/teacher/transports/grpc.py", 's: {diagnose_connection(config)})",',
               's: no connection)",'),),
             (_CAUSES + "test_the_cause_of_an_unreachable_teacher_is_named",)),
    Mutation("ca_not_pem_accepted", "a TLS file that is not PEM is accepted",
             (("tfkd/teacher/config.py", '    if b"-----BEGIN " not in data:\n        raise',
               '    if False:\n        raise'),),
             (_CAUSES + "test_a_ca_file_that_is_not_pem_is_refused_before_connecting",)),
    Mutation("kfp_check_plaintext", "the Kubeflow teacher check ignores the TLS and token settings",
             (("tfkd/kubeflow.py", "connect_timeout_s=timeout_s, **channel) as teacher:",
               "connect_timeout_s=timeout_s) as teacher:"),),
             (_CAUSES + "test_the_kubeflow_teacher_check_reaches_a_tls_teacher_with_a_token",)),
    Mutation("cluster_waits_forever", "a cluster whose peer never starts waits (almost) forever",
             (("tfkd/distribute.py", "str(os.getpid()), str(startup_timeout_s), message]",
               "str(os.getpid()), str(startup_timeout_s * 1000), message]"),),
             ("tests/test_distributed.py::test_a_cluster_whose_peer_never_starts_fails_with_one_line",)),
    Mutation("nan_weights_exported", "a student with non-finite weights is exported",
             (("tfkd/outputs.py", "    if broken:  # Never a new version", "    if False:  #"),),
             (_INPUTS + "test_a_student_with_nan_weights_is_never_exported",)),
    Mutation("class_map_merging_accepted", "a class map sending two teacher classes to one is "
             "accepted", (("tfkd/teacher/config.py",
                           "if self.class_map is not None and len(set(self.class_map))"
                           " != len(self.class_map):", "if False:"),),
             (_INPUTS + "test_a_class_map_that_merges_teacher_classes_is_refused",)),
    Mutation("bomb_decoded", "an image declaring 81 megapixels is decoded",
             (("tfkd/images.py", "declared_pixels(encoded), tf.constant(MAX_IMAGE_PIXELS",
               "tf.constant(0, tf.int64), tf.constant(MAX_IMAGE_PIXELS"),),
             (_INPUTS + "test_a_decompression_bomb_is_skipped_unread",)),
    Mutation("tfrecord_key_unnamed", "a TFRecord without the image key says only that nothing was "
             "read", (("tfkd/images.py", "    _check_image_key(files, image_key)\n", ""),),
             (_INPUTS + "test_a_tfrecord_without_the_image_key_names_the_features_it_has",)),
    Mutation("duplicates_charged_twice", "an image asked twice in one call is sent twice",
             (("tfkd/teacher/teacher_client.py", "        missing = np.sort(unknown[first])",
               "        missing = unknown"),),
             (_INPUTS + "test_an_image_asked_twice_in_one_call_is_sent_and_charged_once",)),
    Mutation("rest_nesting_500", "a deeply nested REST body is answered 500",
             (("tfkd/serving/rest.py", '    except RecursionError:\n        raise _invalid("JSON Parse '
               'error: nested too deeply") from None\n', ""),),
             (_HOSTILE + "test_pathological_rest_requests_get_400_not_500",)),
    Mutation("rest_version_500", "a 24-digit REST version is answered 500",
             (("tfkd/serving/rest.py", '            if int(match["version"]) >= 2 ** 63:',
               "            if False:"),),
             (_HOSTILE + "test_pathological_rest_requests_get_400_not_500",)),
    Mutation("large_bodies_unbounded", "large REST bodies have no concurrency bound",
             (("tfkd/serving/rest.py", "        if length <= LARGE_BODY_BYTES:\n            return",
               "        if True:\n            return"),),
             (_HOSTILE + "test_large_rest_bodies_are_answered_a_few_at_a_time",)),
    Mutation("reload_always_open", "HandleReloadConfigRequest cannot be disabled",
             (("tfkd/serving/grpc_api.py", "        if not self._allow_reload_config:",
               "        if False:"),),
             (_HOSTILE + "test_reload_config_can_be_disabled",)),
    Mutation("classify_error_header", "Classify on non-image bytes answers 'Graph execution error'",
             (("tfkd/serving/signatures.py",
               'f"classify: the examples could not be run ({op_error_cause(e)})"',
               'str(e).split("\\n")[0]'),),
             ("tests/test_classify.py::test_classify_on_bytes_that_are_not_an_image_names_the_cause",)),
]

MUTATIONS += [  # One library, one truth (issue 26).
    Mutation("launcher_restates_a_default", "a launcher flag's default (shown by --help and "
             "docs/flags.md) differs from the library's",
             (("launch/distill.py", "    default = LAUNCHER_DEFAULTS.get(name, setting.default)",
               "    default = LAUNCHER_DEFAULTS.get(name, setting.default)\n"
               "    default = 43_000 if name == 'mixup_num_images' else default"),),
             ("tests/test_docs.py::test_the_flag_reference_is_current",)),
    Mutation("rest_answers_reordered", "the REST teacher returns its answers in another order",
             (("tfkd/teacher/transports/rest.py",
               "dtype=signature.output_dtype.as_numpy_dtype))",
               "dtype=signature.output_dtype.as_numpy_dtype)[::-1])"),),
             ("tests/test_rest_teacher.py::test_rest_grpc_and_in_process_teachers_answer_alike",)),
    Mutation("artifact_key_without_images", "artifact names leave out the image source",
             (("tfkd/pipeline.py", "*(() if config.images is None else (config.images,))", ""),),
             ("tests/test_contract.py::test_artifact_names_hold_every_input_of_the_run",)),
    Mutation("method_report_dropped", "a method's own report fields never reach report.json",
             (("tfkd/pipeline.py", "report.method_report = {", "_ = {"),),
             ("tests/test_one_file_method.py::test_a_method_of_one_file_runs_through_the_library",)),
    Mutation("zskd_targets_tempered_twice", "ZSKD's student tempers its stored tempered targets again",
             (("tfkd/methods/zskd.py", '    loss = "tempered_kd"', '    loss = "kd"'),),
             ("tests/test_distill.py::test_stored_tempered_targets_are_not_tempered_again",)),
    Mutation("selection_on_test_split", "the student's epoch is selected on test images",
             (("tfkd/pipeline.py",
               'return images, targets, dataset.x_val, dataset.y_val, "validation split"',
               'return images, targets, x_test[:len(dataset.x_val)], y_test[:len(dataset.x_val)], '
               '"validation split"'),
              ("tfkd/pipeline.py", "    images, targets = transfer.images, transfer.targets\n",
               "    images, targets = transfer.images, transfer.targets\n"
               "    x_test, y_test = dataset.x_test, dataset.y_test\n")),
             ("tests/test_selection.py::test_the_selected_epoch_is_chosen_on_the_validation_split_and_exported",)),
    Mutation("view_keeps_stored_target", "an augmented impression keeps its impression's stored target",
             (("tfkd/methods/zskd.py", """parts.append(("views", views, whitebox.label_in_process(
                    teacher.logits, views, config.temperature)))""",
               """parts.append(("views", views, np.tile(targets, (config.views, 1))))"""),),
             ("tests/test_zskd.py::test_zskd_runs_end_to_end_from_the_teacher_saved_model",)),
    Mutation("vote_reads_true_class", "the few shots' votes include their true class",
             (("tfkd/pipeline.py", "few_shot_labels=labels if method.reads_true_labels else None",
               "few_shot_labels=labels"),
              ("tfkd/methods/fsbbt.py", 'lambda: self.label(ctx, ctx.few_shot, "label_real"))',
               'lambda: 0.5 * self.label(ctx, ctx.few_shot, "label_real") + 0.5 * np.eye('
               'ctx.num_classes, dtype=np.float32)[ctx.few_shot_labels])')),
             ("tests/test_label_only_soft_labels.py::test_votes_are_the_teachers_answers_over_noisy_copies_and_never_read_the_true_class",)),
    Mutation("db3kd_soft_label_reads_true_class", "DB3KD puts the true class into the soft label, as "
             "the reference code does",
             (("tfkd/pipeline.py", "few_shot_labels=labels if method.reads_true_labels else None",
               "few_shot_labels=labels"),
              ("tfkd/methods/db3kd.py",
               '        return TransferSet.from_parts([("real", ctx.few_shot, targets)])',
               '        targets = 0.5 * targets + 0.5 * np.eye(ctx.num_classes, dtype=np.float32)['
               'ctx.few_shot_labels]\n'
               '        return TransferSet.from_parts([("real", ctx.few_shot, targets)])')),
             ("tests/test_label_only_soft_labels.py::test_db3kd_soft_labels_never_read_the_true_class",)),
    Mutation("damaged_state_reused", "a file that does not load is not set aside",
             (("tfkd/workdir.py", "            moved = set_aside(path)\n", "            raise\n"),),
             ("tests/test_damaged_workdir.py::test_an_artifact_that_does_not_load_is_set_aside_and_built_again",)),
]
MUTATIONS += [  # The docs name what exists (issue 26 §8, begun).
    Mutation("readme_flag_row_dropped", "the generated flag reference loses a flag's row",
             (("docs/flags.md",
               "| `--seed` | `0` | one seed for sampling, synthesis and training. [seed] |\n", ""),),
             ("tests/test_docs.py::test_the_flag_reference_is_current",)),
    Mutation("docs_name_a_gone_function", "the docs name a function that no longer exists",
             (("BUILD_NOTES.md", "(`teacher.check_soft_labels`, the one definition)",
               "(`tfkd.training.epochs_for`, the one definition)"),),
             ("tests/test_docs.py::test_every_file_and_tfkd_name_the_docs_mention_exists",)),
]


_HSJA = "tests/test_boundary.py::test_hopskipjump_finds_the_perpendicular_distance_within_its_query_count"
MUTATIONS += [  # Issue 27 (continued): ZSDB3KD's HopSkipJump search and the class fill.
    Mutation("hsja_normal_flipped", "HopSkipJump's normal estimate points back into the sample's "
             "class", (("tfkd/zeroshot.py", "    return grad / np.maximum(np.linalg.norm(grad, axis=1, "
                        "keepdims=True), 1e-12)", "    return -grad / np.maximum(np.linalg.norm(grad, "
                        "axis=1, keepdims=True), 1e-12)"),),
             (_HSJA,)),
    Mutation("hsja_bisection_keeps_near_side", "the bisection returns the sample's side of the "
             "boundary, not the other class's",
             (("tfkd/zeroshot.py", "    return (x + dist[:, None] * u).astype(np.float32)",
               "    return (x + (dist - theta * length)[:, None] * u).astype(np.float32)"),),
             (_HSJA,)),
    Mutation("zsdb3kd_noise_augmented", "zsdb3kd's student augments noise with stored targets",
             (("tfkd/methods/db3kd.py", '    student_defaults = (("mixup_alpha", 0.0), '
               '("rotation_degrees", 0.0), ("shift_fraction", 0.0))', "    student_defaults = ()"),),
             ("tests/test_db3kd.py::test_zsdb3kd_runs_end_to_end_without_real_images",)),
    Mutation("fill_exact_copies", "a short class is filled with copies of its samples",
             (("tfkd/zeroshot.py", "        parts.append(np.clip(alpha * a + (1 - alpha) * b\n",
               "        parts.append(a + 0 * np.clip(alpha * a + (1 - alpha) * b\n"),),
             ("tests/test_boundary.py::test_a_class_noise_rarely_gives_is_filled_from_its_own_samples",)),
]


_I35 = "tests/test_issue35_mutations.py::"
MUTATIONS += [  # Issue 35: the audit's breakages of the new code that the suite let through.
    Mutation("assistant_auto_is_students", "active.assistant='auto' resolves to the student's "
             "architecture, not the dataset's teacher's",
             (("tfkd/config.py", '                self.active, assistant="" if own else teacher_arch)),',
               '                self.active, assistant="" if own else student_arch)),'),),
             (_I35 + "test_the_auto_assistant_is_the_datasets_teacher_architecture_not_the_students",)),
    Mutation("rest_version_dropped", "the REST client drops teacher.version (the latest version "
             "answers and is recorded)",
             (("tfkd/teacher/client.py", "return self.config.version if self._pinned_version is None",
               "return None if self._pinned_version is None"),),
             (_I35 + "test_the_rest_teacher_asks_the_version_it_is_given_not_the_latest",)),
    Mutation("rest_503_not_retried", "the REST client no longer retries HTTP 503",
             (("tfkd/teacher/transports/rest.py", "503: grpc.StatusCode.UNAVAILABLE,",
               "503: grpc.StatusCode.INTERNAL,"),),
             (_I35 + "test_a_rest_503_is_retried_and_the_call_succeeds",)),
    Mutation("artifact_key_without_label_only", "artifact names leave out the label-only view (a "
             "label-only run reuses a soft-label transfer set)",
             (("tfkd/pipeline.py", "        link.client.signature.identity, link.client.label_only,",
               "        link.client.signature.identity,"),),
             (_I35 + "test_a_label_only_run_never_reuses_a_soft_label_transfer_set",)),
    Mutation("rejected_float32_only", "a failed served-agreement check sets aside the float32 "
             "export only (float16 and int8 stay servable)",
             (("tfkd/evaluation.py", "    rejected = [fs.reject_version(d) for d in variant_dirs.values()]",
               '    rejected = [fs.reject_version(variant_dirs["float32"])]'),),
             (_I35 + "test_a_failed_served_agreement_check_sets_every_exported_variant_aside",)),
    Mutation("hsja_warm_start_dropped", "each HopSkipJump push restarts its search instead of "
             "carrying the previous push's boundary points",
             (("tfkd/zeroshot.py", "            if across is None:\n                across = "
               "starting_points(x, labels, rng)", "            if True:\n                across = "
               "starting_points(x, labels, rng)"),),
             (_I35 + "test_hopskipjump_pushes_carry_their_boundary_points_and_get_further_for_the_"
              "same_queries",)),
    Mutation("jit_compile_not_passed", "StudentConfig.jit_compile never reaches Keras' compile",
             (("tfkd/student/loops.py",
               'jit_compile="auto" if config.jit_compile is None else config.jit_compile,',
               'jit_compile="auto",'),),
             (_I35 + "test_student_jit_compile_is_what_keras_compiles_with",)),
    Mutation("method_loss_dropped", "the method's make_loss is not trained with while the report "
             "still names its loss",
             (("tfkd/pipeline.py",
               "strategy=strategy, verbose=config.verbose, callbacks=callbacks, loss=loss,",
               "strategy=strategy, verbose=config.verbose, callbacks=callbacks,"),),
             (_I35 + "test_a_plugin_methods_own_loss_is_what_the_student_learns",)),
    Mutation("kfp_model_name_dropped", "the Kubeflow distil step's config drops teacher_model_name",
             (("tfkd/kubeflow.py", '{**settings, "teacher.target": teacher, "teacher.model_name": '
               'teacher_model_name})', '{**settings, "teacher.target": teacher})'),),
             (_I35 + "test_the_kubeflow_components_reach_the_teacher_by_its_model_name",)),
    Mutation("kfp_distil_model_name_dropped", "the Kubeflow distil component passes the default "
             "model name, not teacher_model_name",
             (("launch/kubeflow.py", "    result = tfkd.distill(kubeflow.distill_config(workdir, "
               "teacher, teacher_model_name,", "    result = tfkd.distill(kubeflow.distill_config("
               "workdir, teacher, 'teacher',"),),
             (_I35 + "test_the_kubeflow_components_reach_the_teacher_by_its_model_name",)),
    Mutation("kfp_endpoint_model_name_dropped", "the Kubeflow teacher_endpoint component checks the "
             "default model name, not teacher_model_name",
             (("launch/kubeflow.py", "    found = kubeflow.check_teacher(teacher, teacher_model_name, "
               "**{", "    found = kubeflow.check_teacher(teacher, **{"),),
             (_I35 + "test_the_kubeflow_components_reach_the_teacher_by_its_model_name",)),
]

_BUDGET = "tests/test_active_budget.py"
MUTATIONS += [  # Issue 35, finding 2: active querying uses every answer paid for.
    Mutation("proxy_on_real_images_only", "each active round's proxy learns from the real images "
             "only, never from the earlier rounds' answers",
             (("tfkd/active.py", "lambda: train_proxy(images, targets)",
               "lambda: train_proxy(known_images, known_targets)"),),
             (f"{_BUDGET}::test_the_proxy_learns_from_every_earlier_round_and_the_real_images",)),
    Mutation("assistant_without_real_images", "the teacher assistant trains without the N real "
             "images", (("tfkd/methods/fsbbt.py",
                         "labels = self.assistant(ctx, known, np.concatenate([real, answers]))",
                         "labels = self.assistant(ctx, chosen_images, answers)"),),
             (f"{_BUDGET}::test_a_rerun_with_settings_that_choose_or_cost_nothing_pays_no_query_again",)),
    Mutation("active_settings_not_in_fingerprint", "the active settings dropped from the transfer "
             "set's fingerprint (a budgeted and an unbudgeted run share one transfer set)",
             (("tfkd/methods/fsbbt.py", "*((config.active,) if self.active(config) else ())",
               "*()"),),
             (f"{_BUDGET}::test_a_raised_budget_extends_the_earlier_rounds_and_pays_only_the_new_images",)),
    Mutation("plan_counts_ledger_answers", "the budget pre-check counts the stored rounds' ledger "
             "answers as new (a rerun of a run that spent its budget is refused)",
             (("tfkd/active.py", "    to_buy = new_images(total, len(state.labelled))",
               "    to_buy = total"),
              ("tfkd/methods/fsbbt.py", "        return ctx.teacher.missing(stored) + ctx.teacher.share(",
               "        return len(stored) + ctx.teacher.share(")),
             (f"{_BUDGET}::test_a_rerun_with_settings_that_choose_or_cost_nothing_pays_no_query_again",)),
    Mutation("ledger_pool_answers_ignored", "pool images the ledger answers outside the stored rounds "
             "are bought again (a damaged state's recompute)",
             (("tfkd/active.py", "    if answered is None:\n        return 0",
               "    if True:\n        return 0"),),
             (f"{_BUDGET}::test_a_damaged_rounds_state_is_recovered_from_the_ledger_with_no_query",)),
]

def tracked_copy(destination: str) -> None:
    files = subprocess.run(["git", "-C", REPO, "ls-files", "-co", "--exclude-standard"],
                           capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        src = os.path.join(REPO, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(destination, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(destination, rel))


def run(mutation: Mutation) -> tuple[bool, float, str]:
    with tempfile.TemporaryDirectory(prefix=f"tfkd-mutant-{mutation.name}-") as copy:
        tracked_copy(copy)
        for rel, old, new in mutation.edits:
            path = os.path.join(copy, rel)
            text = open(path).read()
            if text.count(old) != 1:
                raise SystemExit(f"{mutation.name}: {old!r} occurs {text.count(old)} times in {rel}")
            with open(path, "w") as f:
                f.write(text.replace(old, new))
        env = dict(os.environ, PYTHONPATH=copy)
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                                 "-p", "no:warnings", *mutation.tests], cwd=copy, env=env,
                                capture_output=True, text=True, timeout=1800)
        lines = result.stdout.strip().splitlines() or [""]
        why = next((line[1:].strip() for line in lines if line.startswith("E ")), "")
        # Caught only when a test failed or errored: a module skipped for a missing extra (pytest's
        # exit status 5, no test collected) catches nothing.
        caught = result.returncode not in (0, 5) and any(
            word in lines[-1] for word in ("failed", "error"))
        return caught, time.perf_counter() - start, f"{lines[-1]}: {why[:120]}"


def main(names):
    chosen = [m for m in MUTATIONS if not names or m.name in names]
    print("| mutation | what | tests | caught? | pytest's last line: first error line | s |")
    print("|---|---|---|---|---|---:|")
    for mutation in chosen:
        caught, seconds, last = run(mutation)
        print(f"| {mutation.name} | {mutation.what} | {', '.join(mutation.tests)} | "
              f"{'**caught**' if caught else 'NOT caught'} | {last} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
