"""DICOM in and out: study packages (`package`: one zip with a DICOMDIR, the images, README and
viewer, streamed by `zipstream`), what a handed-in or received file holds (`dicomfiles`), the
DICOMDIR (`dicomdir`) and the check of received media (`media`)."""
