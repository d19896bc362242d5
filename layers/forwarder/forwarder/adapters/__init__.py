"""Adapters: the ports implemented for one backend each.

``forwarder.adapters.aws`` backs the queue and secrets ports with SQS and Secrets Manager (the deployed
stack); the embedded runtime plugs its own local implementations into the same ports. Adapters turn SDK
errors into the ports' domain exceptions, so nothing above them sees boto3. Import the module you need
(``from forwarder.adapters.aws import SqsQueues``): this package imports nothing, so boto3 is only loaded
by the code paths that use it.
"""
