"""The run loop: the driver, its scheduler and the policies it hands decisions to, the executor that
runs units on Ray, and the tasks each attempt is."""
