"""``python -m streamproc.lab.kubeemu --kubeconfig FILE``: the emulator as its own process."""

from streamproc.lab.kubeemu.server import main

main()
