"""bnlab's Python client: `from bnlab import Client, AsyncClient`.

    with Client() as bn:                      # $BNLAB_URL, $BNLAB_API_KEY
        ds = bn.datasets.upload("concertriccir2.csv")
        job = bn.jobs.create({"dataset": {"id": ds.id}, "network": {"hidden": [3, 2]},
                              "training": {"epochs": 50}})
        job.wait(progress=True)
        history = job.history()               # Keras's shape; as_frame=True for pandas
        study = bn.studies.create("bn-claims", base={"dataset": {"name": "concertriccir2"}})
        study.wait(progress=True)
        print(study.report_markdown())        # a verdict per claim about BatchNorm

Imports httpx and pydantic only (never torch or the server); specs may be given as dicts or as
`models.spec.JobSpec` / `models.experiment.ExperimentSpec`.
"""

from bnlab._async import AsyncClient, AsyncExperiment, AsyncJob, AsyncStudy
from bnlab._sync import Client, Experiment, Job, Study
from bnlab.errors import (
    APIError,
    AuthenticationError,
    BadRequest,
    BnlabError,
    Conflict,
    ConnectionError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    Timeout,
    ValidationError,
    WaitTimeout,
)
from bnlab.types import (
    ClaimVerdict,
    Dataset,
    DoneEvent,
    EpochEvent,
    Event,
    ExperimentChild,
    Prediction,
    StatusEvent,
    StudyClaim,
    StudyReport,
)

__all__ = [
    "APIError", "AsyncClient", "AsyncExperiment", "AsyncJob", "AsyncStudy",
    "AuthenticationError", "BadRequest", "BnlabError", "ClaimVerdict", "Client", "Conflict",
    "ConnectionError", "Dataset", "DoneEvent", "EpochEvent", "Event", "Experiment",
    "ExperimentChild", "Job", "NotFound", "PayloadTooLarge", "Prediction", "RateLimited",
    "ServerError", "StatusEvent", "Study", "StudyClaim", "StudyReport", "Timeout",
    "ValidationError", "WaitTimeout",
]
