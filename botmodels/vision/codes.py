"""QR codes and barcodes with zxing-cpp: no model, sub-millisecond per symbol, every common
1-D and 2-D symbology in one C++ library (pyzbar reads neither DataMatrix nor PDF417).

`type` uses the upper-case names most Python barcode readers (pyzbar) report, so botserver
scripts see the same words as with the earlier botmodels: QRCODE, EAN13, CODE128, …
"""

from __future__ import annotations

from typing import Any

from botmodels.vision.schemas import CodeFound, Point, Rect

# zxing-cpp format name -> the type we report
TYPE_NAMES: dict[str, str] = {
    "QRCode": "QRCODE",
    "MicroQRCode": "MICROQRCODE",
    "RMQRCode": "RMQRCODE",
    "DataMatrix": "DATAMATRIX",
    "PDF417": "PDF417",
    "Aztec": "AZTEC",
    "MaxiCode": "MAXICODE",
    "EAN13": "EAN13",
    "EAN8": "EAN8",
    "UPCA": "UPCA",
    "UPCE": "UPCE",
    "Code128": "CODE128",
    "Code39": "CODE39",
    "Code93": "CODE93",
    "ITF": "ITF",
    "Codabar": "CODABAR",
    "DataBar": "DATABAR",
    "DataBarExpanded": "DATABAR_EXPANDED",
    "DataBarLimited": "DATABAR_LIMITED",
}


def _type_name(barcode: Any) -> str:
    name = str(barcode.format.name) if hasattr(barcode.format, "name") else str(barcode.format)
    for key, value in TYPE_NAMES.items():
        if name == key or name.startswith(key):
            return value
    return name.upper().replace(" ", "").replace("-", "")


def _upce_from_upca(upca: str) -> str | None:
    """The 8-digit UPC-E that expands to this 12-digit UPC-A (GS1 zero-suppression), if any."""
    if len(upca) != 12 or not upca.isdigit() or upca[0] not in "01":
        return None
    s, m, p, c = upca[0], upca[1:6], upca[6:11], upca[11]
    if m[2:] in ("000", "100", "200") and p[:2] == "00":
        body = m[:2] + p[2:] + m[2]
    elif m[3:] == "00" and p[:3] == "000":
        body = m[:3] + p[3:] + "3"
    elif m[4] == "0" and p[:4] == "0000":
        body = m[:4] + p[4] + "4"
    elif p[:4] == "0000" and p[4] in "56789":
        body = m + p[4]
    else:
        return None
    return s + body + c


def _normalise(kind: str, text: str) -> tuple[str, str]:
    """zxing-cpp 3 reports every EAN/UPC as a 13-digit GTIN. Report them as printed instead:
    an EAN-13 with a leading 0 is a UPC-A (12 digits), and a UPC-E is its 8 digits."""
    if kind == "EAN13" and len(text) == 13 and text.startswith("0"):
        return "UPCA", text[1:]
    if kind == "UPCE" and len(text) == 13 and text.startswith("0"):
        return kind, _upce_from_upca(text[1:]) or text[1:]
    return kind, text


def read_codes(image: Any, *, only_qr: bool = False) -> list[CodeFound]:
    """Every symbol in an RGB PIL image, in zxing's reading order (top-left first)."""
    import zxingcpp

    formats = zxingcpp.BarcodeFormats(
        zxingcpp.BarcodeFormat.QRCode if only_qr else zxingcpp.BarcodeFormat.All
    )
    found: list[CodeFound] = []
    for barcode in zxingcpp.read_barcodes(image, formats=formats, try_rotate=True):
        if not barcode.valid:
            continue
        position = barcode.position
        corners = [
            position.top_left,
            position.top_right,
            position.bottom_right,
            position.bottom_left,
        ]
        xs = [p.x for p in corners]
        ys = [p.y for p in corners]
        kind, text = _normalise(_type_name(barcode), barcode.text)
        found.append(
            CodeFound(
                data=text,
                type=kind,
                rect=Rect(
                    left=min(xs),
                    top=min(ys),
                    width=max(xs) - min(xs),
                    height=max(ys) - min(ys),
                ),
                polygon=[Point(x=p.x, y=p.y) for p in corners],
            )
        )
    return found
