"""Vision: captions, VQA, OCR, QR/barcodes (`schemas`, `front`, `codes`);
runners: `runners/vision.py`, `runners/ocr.py`.
"""
