"""Where a study package's web content lies in the zip (IHE PDI, RAD TF-3 4.47): written by
exchange.dicom.webcontent, read in place by the portal's view page (exchange.portal.package_view),
which must not load the imaging libraries to know it."""

FOLDER = "IHE_PDI"
STACKS = f"{FOLDER}/STACKS.JSON"  # the stacks for a program: format 1, see webcontent.stacks
SCRIPT = f"{FOLDER}/VIEWER.JS"
STYLE = f"{FOLDER}/VIEWER.CSS"
