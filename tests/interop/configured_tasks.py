"""The example tasks (examples/python/tasks.py) with extra Celery settings, for a Python
worker that must be configured like the celeriac worker it is compared with:
`celery -A configured_tasks worker` reads them as a JSON object from the environment
variable conftest.PYTHON_WORKER_SETTINGS."""

import json
import os

from conftest import PYTHON_WORKER_SETTINGS
from tasks import app

app.conf.update(json.loads(os.environ.get(PYTHON_WORKER_SETTINGS) or "{}"))
