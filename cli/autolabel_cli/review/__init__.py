"""Reviewing auto-labeling results: confirm proposals into a new manifest version, export them to other
tools' formats, import datasets from common layouts.

Plain library functions, wired into ``kubectl autolabel confirm|export|dataset import`` by the CLI:

- :mod:`.confirm` — :func:`~.confirm.confirm` (ModelArts' "OK" on the "To Be Confirmed" page),
  :func:`~.confirm.load_image_list`, :func:`~.confirm.load_corrections`;
- :mod:`.export` — :func:`~.export.export` to COCO, PASCAL VOC, YOLO or Label Studio;
- :mod:`.dataset_import` — :func:`~.dataset_import.import_dataset` from an ImageFolder tree, COCO or VOC;
- :mod:`.errors` — :class:`~.errors.ReviewError`, raised for bad input before anything is written.

Nothing is re-exported here; import the modules.
"""
