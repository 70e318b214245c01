"""Code shared by ShiftRec's services, training and command line."""
