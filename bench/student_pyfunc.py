"""The MLflow pyfunc model of a distilled student (MLflow's "models from code").

MLflow runs this file when it loads ``runs:/<id>/student``; ``portable`` is the harness's
bench/portable.py, shipped in the model's ``code/`` folder, so loading needs torch, mlflow
(and diffusers for UNet students), never the harness.
Input: a table with a ``seed`` column (and ``label`` for class-conditional students); params
``nfe`` (a step count the student has; default its fewest) and ``device`` (auto, cpu, cuda).
Output: float32 images (N, C, H, W) in the teacher's data range, image i from seed i alone.
"""
import mlflow
from mlflow.pyfunc import PythonModel


try:  # loaded by MLflow: bench/portable.py is the model's code/portable.py
    from portable import StudentSampler
except ImportError:  # MLflow also runs this file once while the harness saves the model
    from bench.portable import StudentSampler


class DistilledStudent(PythonModel):
    # the signature (seed, label -> images; params nfe, device) is declared when the model is
    # saved, so MLflow validates inputs against it; this skips its type-hint inference (and the
    # warning that predict has no hints)
    _skip_type_hint_validation = True

    def load_context(self, context):
        self.folder = context.artifacts["student"]
        self.samplers = {}

    def predict(self, context, model_input, params=None):
        params = params or {}
        device = str(params.get("device") or "auto")
        if device not in self.samplers:
            self.samplers[device] = StudentSampler(self.folder, device)
        seeds = [int(s) for s in model_input["seed"]]
        labels = None
        if "label" in getattr(model_input, "columns", ()) and model_input["label"].notna().all():
            labels = [int(v) for v in model_input["label"]]
        nfe = params.get("nfe")
        x = self.samplers[device].sample(seeds, labels, int(nfe) if nfe else None)
        return x.numpy()


mlflow.models.set_model(DistilledStudent())
