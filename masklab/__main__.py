from masklab.cli import entry

entry()
