"""Writes N messages with the attachments mail carries into DIR, for bench/malware.sh:
office documents (OOXML zips with text and an image), PDFs, zips of photos, photos alone,
and one 1 MB zip per tenth message. Every attachment's bytes differ (no cache can help a
contender). Usage: attachments.py DIR N"""
import io, os, random, sys, zipfile
from email.message import EmailMessage

out, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
WORDS = "the of and to in quarterly report figures revenue meeting budget plan team review".split()


def text(k):
    return " ".join(rng.choice(WORDS) for _ in range(k)).encode()


def photo(size):
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + os.urandom(size)


def zipped(members):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members:
            z.writestr(name, data)
    return b.getvalue()


def docx():
    return zipped([("[Content_Types].xml", b"<Types/>"), ("word/document.xml", text(20000)),
                   ("word/media/image1.jpeg", photo(60000))])


def pdf():
    body = b"".join(b"%d 0 obj << /Length 200 >> stream\n" % i + text(30) + b"\nendstream endobj\n"
                    for i in range(1, 400))
    return b"%PDF-1.5\n" + body + b"trailer << /Root 1 0 R >>\n%%EOF\n"


for i in range(n):
    m = EmailMessage()
    m["From"] = f"sender{i}@outside.test"
    m["To"] = "alice@example.com"
    m["Subject"] = f"documents {i}"
    m.set_content(text(200).decode())
    kind = i % 10
    if kind == 0:
        files = [("photos.zip", zipped([(f"p{j}.jpg", photo(100000)) for j in range(10)]))]
    elif kind in (1, 2, 3):
        files = [(f"report{i}.docx", docx())]
    elif kind in (4, 5, 6):
        files = [(f"paper{i}.pdf", pdf())]
    elif kind in (7, 8):
        files = [(f"photo{i}.jpg", photo(200000))]
    else:
        files = [(f"sheet{i}.xlsx", docx()), (f"notes{i}.pdf", pdf())]
    for name, data in files:
        m.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    with open(f"{out}/{i:04d}.eml", "wb") as f:
        f.write(m.as_bytes().replace(b"\n", b"\r\n"))
