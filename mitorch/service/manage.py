"""What `micontrol cancel|requeue|set-priority|tag|untag|note` (and miviewer's actions) do to
stored trainings and jobs; each outcome is one line given to `say`.

Ids the store does not have are reported together at the end, after the others were handled.
"""
from __future__ import annotations

from collections.abc import Callable

from mitorch.errors import ConfigError
from mitorch.service import transitions
from mitorch.service.labels import MAX_TAGS, check_note, check_tag
from mitorch.service.search.lease import jobs_lease
from mitorch.store import ACTIVE, FINISHED, JobStore, StoreError


def cancel(store: JobStore, ids: list[str], say: Callable[[str], None]) -> None:
    """Cancels trainings, and jobs with their trainings (a search job asks for no more trials and
    ends cancelled at the next tick once its trainings have ended)."""
    unknown: list[str] = []
    local: list = []  # this host's executor, made on first need
    for some_id in ids:
        training = store.get_training(some_id)
        if training is not None:
            _cancel_training(store, training, local, say)
            continue
        job = store.get_job(some_id)
        if job is None:
            unknown.append(some_id)
            continue
        if job["status"] not in ("new", "running") or job.get("cancel_requested"):
            state = job["status"] if job["status"] not in ("new", "running") else "cancelling"
            say(f"unchanged job {some_id} (already {state})")
            continue
        # Under the search step's lease: no tick asks for a trial of this job while it is cancelled.
        with jobs_lease(store, "micontrol-cancel") as lease:
            if job.get("job_type") == "search":
                changed = {"cancel_requested": True}
            else:
                changed = {"status": "cancelled", "completed_at": store.clock()}
            if not store.update_job(some_id, changed, lease=lease.fence):
                raise StoreError(f"job {some_id} was not changed: a controller tick took the search jobs over; "
                                 "try again")
            trainings = store.list_trainings(ACTIVE, job_id=some_id)
            for training in trainings:
                _cancel_training(store, training, local, say)
        after = " (the next micontrol tick ends it)" if job.get("job_type") == "search" else ""
        say(f"{'cancel-requested' if after else 'cancelled'} job {some_id} with its {len(trainings)} "
            f"active training{'s' * (len(trainings) != 1)}{after}")
    _report_unknown(unknown, "training or job")


def _cancel_training(store: JobStore, training: dict, local: list, say: Callable[[str], None]) -> None:
    training_id = training["id"]
    done = transitions.cancel(store, training_id)
    if done == "cancelled":
        say(f"cancelled {training_id}")
    elif done == "requested":
        if not local:
            from mitorch.service.executors import LocalExecutor

            local.append(LocalExecutor(capacity=0))
        if training.get("executor") == local[0].name and local[0].state(training) == "running":
            local[0].cancel(training)  # on this host: stop it now (it checkpoints first)
            say(f"cancel-requested {training_id} (stopping its process)")
        else:
            say(f"cancel-requested {training_id} (its controller stops it at its next tick; "
                "it also stops at the end of its current epoch)")
    else:
        say(f"unchanged {training_id} (already {store.get_training(training_id)['status']})")


def requeue(store: JobStore, ids: list[str], say: Callable[[str], None]) -> None:
    """Queues failed, cancelled, pruned or completed trainings again (a completed one as a fresh
    run, its earlier result kept in its history). A search job's trial is left as it is: its
    study was told how it ended, and an Optuna trial never runs again."""
    unknown = []
    for training_id in ids:
        training = store.get_training(training_id)
        if training is None:
            unknown.append(training_id)
            continue
        if _search_trial(store, training) and training["status"] in FINISHED:
            say(f"unchanged {training_id} (trial {training['trial_number']} of search job {training['job_id']}, "
                f"whose study keeps how it ended; `misubmit --add-trials 1 {training['job_id']}` asks for another "
                "trial)")
            continue
        if transitions.requeue(store, training):
            # A completed one runs afresh, not as a resume at its end.
            kept = " (a fresh run; the earlier result is kept in its history)"
            say(f"requeued {training_id}{kept if training['status'] == 'completed' else ''}")
        else:
            say(f"unchanged {training_id} (it is {store.get_training(training_id)['status']}; cancel it first)")
    _report_unknown(unknown)


def _search_trial(store: JobStore, training: dict) -> bool:
    """Whether the training is a search job's trial (a sweep's trainings are numbered too)."""
    if not training.get("job_id") or training.get("trial_number") is None:
        return False
    job = store.get_job(training["job_id"]) or {}
    return job.get("job_type") == "search"


def _report_unknown(unknown: list[str], kind: str = "training") -> None:
    if unknown:
        raise StoreError(f"no {kind} {', '.join(unknown)}; see miquery for the ids")


def set_priority(store: JobStore, training_id: str, priority: int, say: Callable[[str], None]) -> None:
    """Changes a training's priority (lower runs first).

    Raises:
        StoreError: no such training.
    """
    if not transitions.set_priority(store, training_id, priority):
        raise StoreError(f"no training {training_id}; see miquery for the ids")
    say(f"priority {training_id} {priority}")


def tag(store: JobStore, training_id: str, tags: list[str], say: Callable[[str], None], remove: bool = False) -> None:
    """Adds tags to a training (or with remove, takes them off); each outcome is one line.

    Raises:
        ConfigError: a tag is not one.
        StoreError: no such training.
    """
    for name in tags:
        check_tag(name)
    training = _training(store, training_id)
    kept = [str(t) for t in training.get("tags") or []]
    changed = [t for t in kept if t not in tags] if remove else kept + [t for t in dict.fromkeys(tags) if t not in kept]
    if len(changed) > MAX_TAGS:
        raise ConfigError(f"a training takes at most {MAX_TAGS} tags; {training_id} would have {len(changed)} "
                          "(micontrol untag takes some off)")
    if changed != kept:
        _write_labels(store, training_id, {"tags": changed})
    verb = "untagged" if remove else "tagged"
    say(f"{verb} {training_id} {', '.join(tags)}; its tags: {', '.join(changed) or '(none)'}"
        if changed != kept else f"unchanged {training_id} (its tags: {', '.join(kept) or '(none)'})")


def note(store: JobStore, training_id: str, text: str, say: Callable[[str], None]) -> None:
    """Sets a training's note (an empty text clears it).

    Raises:
        ConfigError: the note is not one line of text, or carries a credential.
        StoreError: no such training.
    """
    text = check_note(text)
    _training(store, training_id)
    _write_labels(store, training_id, {"note": text or None})
    say(f"noted {training_id}" if text else f"cleared the note of {training_id}")


LABELS = ("tags", "note")


def _write_labels(store: JobStore, training_id: str, labels: dict) -> None:
    """The one write of this module that is not through transitions: a training's tags and note,
    which no status or attempt depends on."""
    if not set(labels) <= set(LABELS):
        raise ValueError(f"only {', '.join(LABELS)} are written here, not {sorted(set(labels) - set(LABELS))}")
    store.update_training(training_id, labels)


def _training(store: JobStore, training_id: str) -> dict:
    training = store.get_training(training_id)
    if training is None:
        raise StoreError(f"no training {training_id}; see miquery for the ids")
    return training
