"""`kidneytumorseg review`: a web page over a `batch` output folder to accept, reject or send for
correction each case, flagged cases first. The decision logic lives in plain modules (cases,
decisions, access, slicer_command); the page (app) needs the 'review' extra."""
