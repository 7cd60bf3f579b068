"""`pipeline plan`: what a campaign will cost and how long it will take on a pod mix, before renting
any pod (docs/plan.md "Planning"). The work comes from the spec and the data's size (work.py), the speed
from measurement (throughput.py), the schedule from the driver's own Scheduler run in simulated
time (simulate.py)."""
