"""Reviewing auto-labeling results (image classification and object detection): confirm proposals into a
new manifest version, export them to other tools' formats, review them in Label Studio, import datasets
from common layouts.

Plain library functions, wired into ``kubectl autolabel confirm|export|review|dataset import`` by the CLI:

- :mod:`.common` — reading results: :func:`~.common.read_proposals` (detection: the boxes of each line's
  VOC file);
- :mod:`.confirm` — :func:`~.confirm.confirm` (ModelArts' "OK" on the "To Be Confirmed" page),
  :func:`~.confirm.load_image_list`, :func:`~.confirm.load_corrections` (labels, or boxes as JSON lines);
- :mod:`.export` — :func:`~.export.export` to COCO, PASCAL VOC, YOLO or Label Studio;
- :mod:`.labelstudio` — :func:`~.labelstudio.push` and :func:`~.labelstudio.pull` (Label Studio's REST API);
- :mod:`.dataset_import` — :func:`~.dataset_import.import_dataset` from an ImageFolder tree, COCO or VOC;
- :mod:`.errors` — :class:`~.errors.ReviewError`, raised for bad input before anything is written.

Nothing is re-exported here; import the modules.
"""
