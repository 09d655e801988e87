"""
twistd commands of vmqtw: ``twistd vmqtw`` runs a node, ``twistd
vmqtw-admin`` steers a cluster.  Lazy, so that listing plugins imports
nothing of the broker.
"""
from twisted.application.service import ServiceMaker

vmqtw = ServiceMaker(
    "vmqtw", "vmqtw.tap", "A clustered MQTT broker modelled on VerneMQ.", "vmqtw")
vmqtw_admin = ServiceMaker(
    "vmqtw-admin", "vmqtw.admin.tap", "Steer a vmqtw cluster: join, leave, show.", "vmqtw-admin")
