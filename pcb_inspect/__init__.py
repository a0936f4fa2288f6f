"""The line client of the pcb-inspect service and the ``pcb-inspect`` command.

:mod:`pcb_inspect.client` (the API from Python), :mod:`pcb_inspect.client_cli` and
:mod:`pcb_inspect.records_cli` (its commands), :mod:`pcb_inspect.cli` (the command's table,
server commands included, imported only when they run) and :mod:`pcb_inspect.classes`. None of
it imports TensorFlow or the service: ``pip install .`` brings only httpx and rich.
"""
