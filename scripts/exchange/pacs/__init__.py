"""DICOM networking with the hospital's PACS (pynetdicom): query, retrieve, store."""
