"""Object detection: a class-agnostic torchvision FCOS finds the objects, a crop classifier names them.

Why two parts (measured on the digit-boxes sample, 6 labeled images, docs/detection.md): one FCOS
predicting 3 classes learned *where* objects are but named them at chance level (label right on 49 of
175 found boxes), because its classification branch sees each class a few dozen times. Finding objects
is one shared task that learns from every labeled box; naming them is image classification on the box
crops, where the worker's K-fold classifier, its calibration and its hard-example checks already work
with five labels per class.
"""
