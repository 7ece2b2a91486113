"""The MLflow server app that ``bench ui`` serves: MLflow's own, opening on model training.

MLflow 3.17's UI picks its GenAI or model-training layout from the link's ``workflowType``,
else from the browser's stored choice (localStorage ``mlflow.workflowType_v1``), else GenAI;
the experiment's ``mlflow.experimentKind`` tag, which the harness sets, is not read. So the
page MLflow serves at ``/`` gets a one-line script that stores "machine_learning" as the choice
when the browser has made none: a bare link to the server, or to an experiment, opens on the
training runs, and a user who picks GenAI in the UI keeps that choice. Registered as the
``mlflow.app`` entry point ``distill-bench`` and started by ``mlflow server --app-name``.
"""
from __future__ import annotations

from pathlib import Path

from flask import Response
from mlflow.server import app as flask_app
from mlflow.server.fastapi_app import app  # the ASGI app uvicorn serves

__all__ = ["app", "index_opening_on_training"]

CHOICE_KEY, TRAINING = "mlflow.workflowType_v1", "machine_learning"
DEFAULT_VIEW = (f"<script>try{{if(!localStorage.getItem('{CHOICE_KEY}'))"
                f"localStorage.setItem('{CHOICE_KEY}','\"{TRAINING}\"')}}catch(e){{}}</script>")

_mlflow_index = flask_app.view_functions["serve"]


def index_opening_on_training():
    page = Path(flask_app.static_folder or "", "index.html")
    if not page.is_file():  # a source install without the built UI: MLflow's own message
        return _mlflow_index()
    # before MLflow's scripts, which are deferred, so the choice is stored when the app reads it
    html = page.read_text(encoding="utf-8").replace("<head>", "<head>" + DEFAULT_VIEW, 1)
    return Response(html, mimetype="text/html")


flask_app.view_functions["serve"] = index_opening_on_training
