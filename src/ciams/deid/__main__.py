"""``python -m ciams.deid INPUT OUTPUT``: ``ciams deid`` with a light start-up."""

from ciams.deid.command import main

raise SystemExit(main())
