"""Forwarder: validates flat customer records, maps them per group key and delivers them to CRM platforms.

The package is the shared Lambda layer. Dependencies point one way: ``flows`` (the business of each Lambda)
use ``contract``, ``config``, ``mapping`` and ``integrations``, and reach stores only through ``ports``;
``adapters`` implement the ports for AWS, and the embedded stack (``forwarder_local``) for one machine.
"""

__version__ = "0.1.0"
