"""What the tests, the benchmarks and the figure scripts share; never imported by the service.

Left out of the runtime image by ``.dockerignore``, like :mod:`pcb_inspect.synth`.
"""
