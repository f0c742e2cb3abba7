"""Cost of engine steps: the roofline per operator, and the calibration that sets its efficiencies."""
