"""Sub-commands of the ``gradcomp`` command line (see ``gradcomp.cli``)."""
