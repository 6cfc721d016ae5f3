import time
def test_probe(line_run, digits_run):
    pass
