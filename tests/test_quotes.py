"""Words in double quotation marks in the prose are the paper's own words, verbatim (the house rule).

Every passage of five or more words in "…" or “…” in the notebooks' markdown cells (index included) and in
README.md (written from the index by `illama-docs`) must occur in the paper's text in `../shared/papers/` (beside the
checkout). Text in code spans, fenced code, HTML tags, link targets and $…$ maths is not prose and is skipped. The
comparison keeps letters and digits only, lowercased, so punctuation, spacing, line breaks and hyphenation across lines
do not matter; an ellipsis (… or ...) in a quote marks left-out words, the words around it must occur in that order.

The text files were extracted from PDFs: the anonymous version's references and appendix carry the margin line numbers
of the review template, 3 or 4 digits (a line that is only `487` or ` 1125`, or `- 605 Shikhar Tuli, …` and
` 1123 ViT-T/16. The loss …` at a line's start). They are removed before comparing, so a quote across such a break
matches; a quote is also compared with the text as extracted, so a real number at a line's start (a table's value) that
the removal took still matches.

The iLLaMA paper is 000-002 (the arXiv abstract pages, "Adapting LLaMA Decoder to Vision Transformer", and the full
text, "LLaMA Decoder as Vision Transformer"); 003 is VisionLLaMA, another paper: a quote found only there passes only
where its paragraph names VisionLLaMA. A quote that is not the paper's words (a program's message, a question, a term,
a paraphrase) belongs in italics or a code span, or without quotation marks."""
import json, os, re, unicodedata
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAPERS = ROOT.parent / 'shared' / 'papers'
IN_CI = os.environ.get('CI', '').lower() not in ('', '0', 'false', 'no')
MIN_WORDS = 5
GAP = '\x00'   # stands for left-out words: an ellipsis, or a code span or formula inside a quote

_FENCE = re.compile(r'^[ \t]*(```|~~~).*?^[ \t]*\1[^\n]*$', re.M | re.S)
_CODE = re.compile(r'(`+)(?:(?!\1).)+?\1', re.S)
_MATH = re.compile(r'\$\$.+?\$\$|(?<![\\$])\$(?!\s)[^$\n]+?(?<![\s\\])\$', re.S)
_TAG = re.compile(r'<!--.*?-->|</?[A-Za-z][^<>]*>', re.S)
_LINK_TARGET = re.compile(r'\]\([^()\s]*(?:\s+"[^"]*")?\)')
_QUOTE = re.compile(r'“([^“”]+)”|"([^"]+)"')
_ELLIPSIS = re.compile(r'…|\.\s?\.\s?\.|\[\s*(?:…|\.\.\.)\s*\]')
# the review template's margin line numbers: a line that is only a number, or a number opening a line ("- 605 Name")
_MARGIN_LINE = re.compile(r'^[ \t]*(?:-[ \t]+)?\d{3,4}[ \t]*\n', re.M)
_MARGIN_START = re.compile(r'^([ \t]*(?:-[ \t]+)?)\d{3,4}(?:[ \t]+|$)', re.M)


def norm(s: str) -> str:
    "Letters and digits only, lowercase (ligatures and accents folded by NFKD)."
    return re.sub(r'[^a-z0-9]', '', unicodedata.normalize('NFKD', s).lower())

def strip_margin_numbers(text: str) -> str:
    "`text` without the PDF's margin line numbers: lines that are only a 3-4 digit number, and one at a line's start."
    return _MARGIN_START.sub(r'\1', _MARGIN_LINE.sub('', text))

def prose(md: str) -> str:
    "Markdown without what is not prose: fences, HTML tags, link targets removed; code spans and maths left as gaps."
    md = _FENCE.sub('', md)
    md = _TAG.sub(' ', _LINK_TARGET.sub(']', md))
    return _MATH.sub(f' {GAP} ', _CODE.sub(f' {GAP} ', md))

def quotes(md: str, min_words: int = MIN_WORDS) -> list[tuple[str, str]]:
    "(quote, its paragraph) for each double-quoted passage of `min_words` or more words in markdown `md`."
    out = []
    for para in re.split(r'\n[ \t]*\n', prose(md)):
        for m in _QUOTE.finditer(para):
            q = m.group(1) or m.group(2)
            if len([w for w in q.split() if GAP not in w and any(ch.isalnum() for ch in w)]) >= min_words:
                out.append((' '.join(q.replace(GAP, '…').split()), para))
    return out

def found(quote: str, texts) -> bool:
    "Whether `quote` occurs in one of `texts` (normalised): the pieces an ellipsis or a gap separates, in order."
    pieces = [p for p in (norm(x) for x in _ELLIPSIS.split(quote.replace(GAP, '…'))) if p]
    for t in texts:
        i = 0
        for p in pieces:
            i = t.find(p, i)
            if i < 0: break
            i += len(p)
        else:
            if pieces: return True
    return False

def _variants(text: str) -> list[str]:
    "A paper's text, normalised, without its margin line numbers and as extracted."
    return list(dict.fromkeys([norm(strip_margin_numbers(text)), norm(text)]))

@pytest.fixture(scope='module')
def papers() -> dict[str, list[str]]:
    "{'illama': [normalised texts], 'visionllama': [...]} from ../shared/papers/*.txt."
    files = sorted(PAPERS.glob('*.txt')) if PAPERS.is_dir() else []
    if not files:
        msg = f'the paper texts are not beside the checkout ({PAPERS}/*.txt): cannot check the quotes'
        if IN_CI: pytest.fail(msg + ' (CI is set)')
        pytest.skip(msg)
    out = {'illama': [], 'visionllama': []}
    for f in files:
        text = f.read_text(encoding='utf-8', errors='replace')
        key = 'visionllama' if 'visionllama' in norm(text[:300]) else 'illama'
        out[key] += _variants(text)
    assert out['illama'], f'no iLLaMA paper text among {[f.name for f in files]}'
    return out

def sources() -> list[tuple[str, str]]:
    "(name, markdown) for every markdown cell of nbs/*.ipynb, and README.md (generated from nbs/index.ipynb)."
    out = []
    for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
        for i, c in enumerate(json.loads(nb.read_text(encoding='utf-8'))['cells']):
            if c['cell_type'] == 'markdown': out.append((f'nbs/{nb.name} (cell {i})', ''.join(c['source'])))
    readme = ROOT / 'README.md'
    if readme.exists(): out.append(('README.md', readme.read_text(encoding='utf-8')))
    return out

def missing(papers) -> list[str]:
    "One line for each quote that is not the paper's words."
    out = []
    for name, md in sources():
        for q, para in quotes(md):
            if found(q, papers['illama']): continue
            if found(q, papers['visionllama']):
                if 'visionllama' in para.lower(): continue
                out.append(f'{name}: "{q}" (only in VisionLLaMA\'s paper, and its paragraph does not name VisionLLaMA)')
            else: out.append(f'{name}: "{q}"')
    return out

def test_quotes_are_the_papers_words(papers):
    bad = missing(papers)
    if bad: pytest.fail(f'{len(bad)} quoted passage(s) are not in the paper\'s text ({PAPERS}): quote its exact words, '
                        'or mark them another way (italics, a code span, no quotation marks):\n' + '\n'.join(bad))

def test_matcher_can_fail(papers):
    "A verbatim quote with other punctuation and line breaks matches; a paraphrase of the same sentence does not."
    t = papers['illama']
    assert found('Since LPE functions\nonly once, before all Transformer-blocks', t)
    assert found('since lpe functions only once … keeping it does not disrupt the alignment', t)
    assert not found('it functions only once before all Transformer blocks', t)
    assert not found('the training loss does not converge', t)
    assert not found('keeping it does not disrupt … since LPE functions only once', t)   # pieces out of order
    # quotes across margin line numbers: the references ("- 605 … net-" / "606 works or …"), Appendix J (" 1124")
    assert found('Are convolutional neural networks or transformers more like human vision?', t)
    assert found('with the steepness and bumps observed in ViT seeming to be softened', t)
    assert not found('Are convolutional neural networks or transformers more like human vision?', [norm('''
- 605 Shikhar Tuli, Ishita Dasgupta, Erin Grant, and Thomas L Griffiths. Are convolutional neural net-
606 works or transformers more like human vision? arXiv preprint arXiv:2105.07197, 2021.''')])

def test_extraction():
    "Quotes are found in prose only: not in code, maths, tags or link targets; short quotes and curly ones too."
    md = ('He said "one two three four five" and “six seven eight nine ten”, "a b c".\n\n'
          '`"not prose one two three"` $"x y z w v"$ <a title="one two three four five">x</a>\n\n'
          '```\n"fenced one two three four"\n```\n[t](https://x.org "one two three four five")')
    assert [q for q, _ in quotes(md)] == ['one two three four five', 'six seven eight nine ten']
    assert [q for q, _ in quotes('a "b c `d` e f g" h')] == ['b c … e f g']
    text = '- 486\n487\n488 Benedikt Alkin, and Johannes\n- 490 Jimmy Ba. Layer normal-\n491 ization. 2016.\n'
    assert strip_margin_numbers(text) == 'Benedikt Alkin, and Johannes\n- Jimmy Ba. Layer normal-\nization. 2016.\n'
    text = '1122 As shown in Figure 10, the\n 1123 ViT-T/16. The loss\n 1125\n 1126\n\n1127\n 1128 **K CLASS**\n'
    assert strip_margin_numbers(text) == 'As shown in Figure 10, the\n ViT-T/16. The loss\n\n **K CLASS**\n'
