"""`shiftrec demo` (make demo): the whole product end to end on embedded defaults."""
