"""tfkd: black-box knowledge distillation for teachers served by TensorFlow Serving.

Entry point: :func:`tfkd.pipeline.run` with a :class:`tfkd.pipeline.DistillConfig`; methods are
plug-ins of :mod:`tfkd.methods`; the teacher is reached through :mod:`tfkd.teacher` over
:mod:`tfkd.client`; :mod:`tfkd.serving` is a TF-Serving-compatible model server.
"""
