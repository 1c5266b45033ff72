"""The cluster deploy: ``LLAMAFLEET_INVENTORY=cluster.yaml pyinfra inventory/cluster.py deploys/cluster.py``.

Per host: one state fact, then only the operations whose commands differ from that state; a second
run changes nothing. See docs/deploys.md.
"""

from pyinfra import host

from llamafleet.deploys.deploy import deploy_host

deploy_host(host)
