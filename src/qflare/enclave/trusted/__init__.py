"""The code that runs inside the enclave process (every module here is measured).

Start it with ``python -m qflare.enclave.trusted`` (the launchers in :mod:`qflare.enclave.launcher`
do); it speaks the call table of :mod:`qflare.enclave.ecalls` on its standard input and output.
"""
