"""Testing one commit on this host: no Redis, no Celery.

:mod:`.commit` checks a commit out, makes its environment ready and runs its tests;
:mod:`.process` is the one place where an untrusted process starts, each in a
:mod:`.box` (what it may see), in the :mod:`.cgroups` of its limits, under the supervisor
of :mod:`.sandbox`;
:mod:`.index_proxy` and :mod:`.relay` give build steps the package index and nothing
else; :mod:`.recipe` and :mod:`.environments` decide and build the cached run
environments; :mod:`.outcome` says what a run's results mean; :mod:`.runs` keeps each
run's folder and cleans up after dead workers.
"""
