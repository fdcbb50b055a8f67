"""The docs site in a real browser: `illama-docs` builds it from the notebooks into a temporary folder, a local HTTP
server serves it on 127.0.0.1, and Debian's headless Chromium (driven through chromedriver by selenium) loads the home
page and every page in the sidebar, as a reader would, with no network.

Where chromium or chromedriver is missing the browser tests are skipped, naming what is missing and how to install it
(`.ci/run` installs both); with `CI` or `ILLAMA_REQUIRE_BROWSER` set they fail instead, so CI cannot pass without
having looked at the site. Screenshots of every page go to `$ILLAMA_DOCS_SCREENSHOTS` (default: beside the site).
`$ILLAMA_DOCS_SITE` checks a site built already (`illama-docs --out DIR`) instead of building one."""
import functools, http.server, json, os, re, shutil, subprocess, sys, threading, urllib.error, urllib.parse
import urllib.request, warnings
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which('chromium') or ('/usr/bin/chromium' if Path('/usr/bin/chromium').exists() else None)
DRIVER = shutil.which('chromedriver') or ('/usr/bin/chromedriver' if Path('/usr/bin/chromedriver').exists() else None)
MISSING = [n for n, p in (('chromium', CHROMIUM), ('chromedriver (Debian: chromium-driver)', DRIVER)) if not p]
REQUIRED = any(os.environ.get(k, '').lower() not in ('', '0', 'false', 'no') for k in ('CI', 'ILLAMA_REQUIRE_BROWSER'))
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--disable-quic', '--disable-dev-shm-usage',
         '--window-size=1400,900']
WIDTH, HEIGHT = 1400, 900           # a reader's laptop window: every check below is measured at this size
ROADMAP = ['00_vit.ipynb', '01_swiglu.ipynb', '02_rmsnorm.ipynb', '03_causal.ipynb', '04_rope.ipynb',
           '05_soft_mask.ipynb', '06_illama.ipynb']
# the sidebar's sections, by layer, and the chapter numbers each holds (_quarto.yml)
SECTIONS = [('The roadmap', range(0, 7)), ('Speed', range(7, 9)), ('Reference data', range(9, 10)),
            ('Training', range(10, 13)), ('Experiments', range(13, 90)), ('Docs and API', range(90, 100))]
# what a reader must not see outside the code a chapter shows (its outputs included): this machine's paths, progress
# bars, docstrings that are not ours, source links to a repository that does not exist
LOCAL = [str(ROOT), str(Path.home()) + '/', '/tmp/', '/work/', 'site-packages', '/.venv/']
NOISE = ['█', 'Call self as a function', 'CustomOpDef', '#LNone', 'No CUDA runtime is found']
RAW_TEX = [r'\mathrm', r'\mathbf', r'\frac', r'\sum', r'\alpha', r'\le ', '$$', r'\(', r'\[']


def _renderer():
    return 'quarto' if shutil.which('quarto') else 'smalldocs'

def _page(nb_name):
    "The HTML page of a notebook under the renderer in use (same rule as illama.workshop.docs.page_name)."
    if _renderer() == 'quarto': return re.sub(r'^\d+[a-zA-Z0-9]*_', '', nb_name.lower()).removesuffix('.ipynb') + '.html'
    return nb_name.removesuffix('.ipynb') + '.html'

def _numbered():
    "The numbered notebooks in nbs/, in number order: the order the sidebar must show them in."
    nbs = [p.name for p in (ROOT / 'nbs').glob('*.ipynb') if re.match(r'^\d+[a-z]?_', p.name)]
    return sorted(nbs, key=lambda n: (int(re.match(r'\d+', n).group()), n))

def _cells(nb_name, kind):
    return [''.join(c['source']) for c in json.loads((ROOT / 'nbs' / nb_name).read_text())['cells'] if c['cell_type'] == kind]

def _has_figure(nb_name):
    "Whether a notebook draws a figure in a cell the docs run (a matplotlib call outside `#| eval: false` / skip flags)."
    for src in _cells(nb_name, 'code'):
        if re.search(r'^#\|\s*(eval:\s*false|hide|notest|slow)\b', src, re.M): continue
        if re.search(r'\bplt\.|\.plot\(|\bplot_\w+\(|\bimshow\(|\bImage\(', src): return True
    return False

def _has_tex(nb_name):
    "Whether a notebook's prose holds a formula ($...$ or $$...$$)."
    return any(re.search(r'\$\$.+?\$\$|\$[^$\s][^$\n]*\$', re.sub(r'`[^`]*`', '', s), re.S) for s in _cells(nb_name, 'markdown'))


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "Build the site from this checkout's notebooks with the documented command, into a temporary folder."
    if os.environ.get('ILLAMA_DOCS_SITE'):          # a developer re-checking a site built already (never set by CI)
        return Path(os.environ['ILLAMA_DOCS_SITE'])
    out = tmp_path_factory.mktemp('docs') / '_docs'
    env = {**os.environ, 'PYTHONPATH': str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', '')}
    cli = Path(sys.executable).with_name('illama-docs')          # the documented command, where it is installed
    cmd = [str(cli)] if cli.exists() else [sys.executable, '-m', 'illama.workshop.docs']
    r = subprocess.run(cmd + ['--root', str(ROOT), '--out', str(out), '--no-readme'],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-8000:]
    assert (out / 'index.html').is_file() and (out / '.illama-docs-site').is_file()
    return out


def test_site_loads_nothing_from_the_network(site):
    "No page asks for a script, a stylesheet or a picture from another host (KaTeX from a CDN was one)."
    for p in sorted(site.glob('*.html')):
        ext = re.findall(r'<(?:script|link|img)\b[^>]*(?:src|href)="(https?:[^"]*)"', p.read_text())
        assert not ext, f"{p.name} loads {ext}"


@pytest.fixture(scope='module')
def server(site):
    "Serve the site on 127.0.0.1, on a free port."
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a): pass
    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):      # the browser closing a connection early is not an error
            if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)): super().handle_error(request, client_address)
    httpd = Server(('127.0.0.1', 0), functools.partial(Quiet, directory=str(site)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}/'
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope='module')
def browser(tmp_path_factory):
    "Debian's Chromium, headless, with a fresh profile, through Debian's chromedriver (nothing is downloaded)."
    if MISSING:
        why = (f"the docs browser test needs {' and '.join(MISSING)}, not installed: "
               "apt-get install -y chromium chromium-driver (.ci/run does)")
        if REQUIRED: pytest.fail(why + "; CI / ILLAMA_REQUIRE_BROWSER is set, so this is a failure, not a skip")
        warnings.warn(why)
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS + [f'--user-data-dir={tmp_path_factory.mktemp("chromium-profile")}']: opts.add_argument(f)
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL', 'performance': 'ALL'})   # console and network logs
    d = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    d.set_page_load_timeout(60)
    yield d
    d.quit()


PAGE_INFO = """
const abs = (u) => new URL(u, document.baseURI).href;
const main = document.querySelector('main') || document.body;
const text = (drop) => { const c = main.cloneNode(true); c.querySelectorAll(drop).forEach(e => e.remove());
                         return c.innerText; };
return {
  title: document.title,
  sidebar: Array.from(document.querySelectorAll('#quarto-sidebar a[href]')).map(a => a.getAttribute('href')),
  sections: Array.from(document.querySelectorAll('#quarto-sidebar li.sidebar-item-section')).map(s => ({
      title: s.querySelector('.menu-text').innerText.trim(),
      pages: Array.from(s.querySelectorAll('ul a[href]')).map(a => a.getAttribute('href'))})),
  links: Array.from(document.querySelectorAll('a[href], link[href], script[src], img[src]'))
              .map(e => abs(e.getAttribute('href') || e.getAttribute('src'))),
  images: Array.from(document.images).map(i => ({src: i.src.slice(0, 80), complete: i.complete, w: i.naturalWidth})),
  tables: main.querySelectorAll('table').length,
  maths: Array.from(main.querySelectorAll('math')).map(m => m.getBoundingClientRect().width),
  katex_errors: document.querySelectorAll('.katex-error').length,
  ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
  prose: text('pre, code, script, style, math'),
  shown: text('pre:not(.cell-output *), code:not(.cell-output *), script, style, math'),
  height: document.documentElement.scrollHeight,
  // the right edge of the column the content must end in (the window, or main's own edge if narrower)
  edge: Math.min(window.innerWidth, main.getBoundingClientRect().right) + 1,
  // each table: the right edge of its last column (of its widest row) and its first header
  table_ends: Array.from(main.querySelectorAll('table')).map(t => ({
      right: Math.max(0, ...Array.from(t.rows).map(r => r.cells.length ? r.cells[r.cells.length - 1].getBoundingClientRect().right : 0)),
      head: (t.rows[0] ? t.rows[0].innerText : '').slice(0, 80)})),
  // each formula: its right edge, or null when a box around it scrolls sideways (the rest of it is hidden)
  math_ends: Array.from(main.querySelectorAll('math')).map(m => {
      let right = m.getBoundingClientRect().right;
      for (let e = m.parentElement; e && e !== main; e = e.parentElement)
        if (e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX !== 'visible') right = null;
      return {right, text: m.textContent.slice(0, 60)}; }),
  // each table's columns that are empty in every body row (their headers)
  empty_columns: Array.from(main.querySelectorAll('table')).flatMap(t => {
      const body = Array.from(t.rows).slice(1), head = t.rows[0] ? Array.from(t.rows[0].cells) : [];
      return body.length ? head.map((h, j) => body.every(r => !r.cells[j] || !r.cells[j].innerText.trim()) ? h.innerText.trim() : null)
                                .filter(h => h !== null) : []; }),
  // each picture: its alt text and the caption of the figure around it
  pictures: Array.from(main.querySelectorAll('img')).map(i => ({src: (i.getAttribute('src') || '').slice(0, 60), alt: (i.alt || '').trim(),
      caption: ((i.closest('figure') || {}).querySelector ? ((i.closest('figure').querySelector('figcaption') || {}).innerText || '') : '').trim()}))};"""

# the page is measured once it has rendered: loaded, its pictures decoded, its fonts ready, its sidebar built. Under load
# a page measured on a timer was caught half drawn (714 px tall where it is 5,800); a condition waits as long as needed.
READY = """return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)
  && (!document.fonts || document.fonts.status === 'loaded') && !!document.querySelector('#quarto-sidebar a[href]')
  && !!document.querySelector('main');"""


def _requests(log, server) -> list[str]:
    "The URLs the page asked for (Chromium's network log) that are neither this server nor inline data."
    urls = []
    for e in log:
        m = json.loads(e['message'])['message']
        if m.get('method') == 'Network.requestWillBeSent': urls.append(m['params']['request']['url'])
    return [u for u in urls if not u.startswith((server, 'data:', 'blob:', 'about:'))]


@pytest.fixture(scope='module')
def pages(browser, site, server):
    "Load the home page and every page of the sidebar; record what the checks need; save a screenshot of each."
    shots = Path(os.environ.get('ILLAMA_DOCS_SCREENSHOTS') or site.parent / 'screenshots')
    shots.mkdir(parents=True, exist_ok=True)
    from selenium.webdriver.support.ui import WebDriverWait
    browser.set_window_size(WIDTH, HEIGHT)
    def load(name):
        browser.get_log('performance')                       # drop what earlier pages asked for
        browser.get(server + name)
        WebDriverWait(browser, 300, poll_frequency=0.2).until(lambda d: d.execute_script(READY))
        info = browser.execute_script(PAGE_INFO)
        info['requests'] = _requests(browser.get_log('performance'), server)
        browser.set_window_size(WIDTH, max(HEIGHT, min(info['height'], 6000)))
        browser.save_screenshot(str(shots / (name.replace('/', '_') + '.png')))
        browser.set_window_size(WIDTH, HEIGHT)
        info['log'] = [e for e in browser.get_log('browser') if e['level'] == 'SEVERE']
        return info
    res = {'index.html': load('index.html')}
    for href in res['index.html']['sidebar']:
        name = urllib.parse.urlparse(href).path.lstrip('/') or 'index.html'
        if name not in res: res[name] = load(name)
    return res


def test_no_request_leaves_the_machine(pages):
    "Chromium's network log: every page, its stylesheets' imports and fonts included, asks only this server."
    for name, p in pages.items():
        assert not p['requests'], f"{name} asked the network for {p['requests'][:5]}"
        assert not [e for e in p['log'] if 'ERR_' in e['message']], f"{name}: {p['log'][:3]}"


def test_tables_and_formulas_end_inside_the_window(pages):
    "At 1400 x 900 each table's last column and each formula end inside the content column: no verdict off-screen."
    for name, p in pages.items():
        wide = [(round(t['right']), t['head']) for t in p['table_ends'] if t['right'] > p['edge']]
        assert not wide, f"{name}: tables whose last column ends past {p['edge']:.0f} px: {wide[:4]}"
        cut = [(m['right'], m['text']) for m in p['math_ends'] if m['right'] is None or m['right'] > p['edge']]
        assert not cut, f"{name}: formulas cut off or scrolling in their box: {cut[:4]}"


def test_no_markdown_table_printed_as_text(pages):
    "A table reaches the reader as a table: no `|---|` rule in the prose or in a cell's printed output."
    for name, p in pages.items():
        raw = re.findall(r'^.*\|\s*:?-{3,}:?\s*\|.*$', p['shown'], re.M)
        assert not raw, f"{name} prints a markdown table as text: {raw[:2]}"


def test_no_table_column_is_empty_in_every_row(pages):
    "No table (the API's parameter tables included) has a column with nothing in it: it would say nothing."
    for name, p in pages.items():
        assert not p['empty_columns'], f"{name}: columns empty in every row: {p['empty_columns'][:6]}"


def test_chapter_09_shows_the_papers_tables(pages):
    "Chapter 09 promises every number the paper reports in one place: it shows them as tables, not only as tests."
    p = pages[_page('09_paper.ipynb')]
    assert p['tables'] >= 10, f"09_paper shows {p['tables']} tables"
    for caption in ('Table 17', 'Table 1', 'Table 3', 'Table 5', 'Table 6'):
        assert caption in p['prose'], f"09_paper does not show {caption}"


def test_every_image_has_words(pages):
    "Each picture has alt text or a caption, for a reader who cannot see it and for one who wants to know what to see."
    for name, p in pages.items():
        mute = [i['src'] for i in p['pictures'] if not (i['alt'] or i['caption'])]
        assert not mute, f"{name}: pictures with neither alt text nor a caption: {mute}"


def test_navigation_lists_every_chapter_in_order_by_layer(pages):
    side = [urllib.parse.urlparse(h).path.split('/')[-1] for h in pages['index.html']['sidebar']]
    numbered = [_page(n) for n in _numbered()]
    missing = [n for n in numbered if n not in side]
    assert not missing, f"pages missing from the sidebar: {missing}; sidebar: {side}"
    assert [n for n in side if n in numbered] == numbered, side
    assert [_page(n) for n in ROADMAP] == [n for n in numbered if n in map(_page, ROADMAP)], "roadmap chapters missing"
    assert side[0] == 'index.html'
    num = {_page(n): int(re.match(r'\d+', n).group()) for n in _numbered()}
    got = {s['title']: [num[h.split('/')[-1]] for h in s['pages']] for s in pages['index.html']['sections']}
    assert list(got) == [t for t, r in SECTIONS if any(n in r for n in num.values())], got
    for title, r in SECTIONS:
        assert sorted(got.get(title, [])) == [n for n in sorted(num.values()) if n in r], (title, got)
    for name, p in pages.items(): assert p['sidebar'] == pages['index.html']['sidebar'], name   # one sidebar


def test_every_page_loads_with_its_figures(pages):
    for nb in ['index.ipynb'] + _numbered():
        p = pages.get(_page(nb))
        assert p is not None, f"{nb}: not reached from the sidebar"
        bad = [i for i in p['images'] if not i['complete'] or i['w'] <= 0]
        assert not bad, f"{nb}: images that did not load: {bad}"
        if nb == 'index.ipynb' or (nb in ROADMAP and _has_figure(nb)):
            assert p['images'], f"{nb} draws a figure but its page shows no image"
        assert not [e for e in p['log'] if '127.0.0.1' in e['message']], f"{nb}: {p['log']}"


def test_every_formula_is_drawn(pages):
    "Each page whose notebook has formulas shows them as MathML with a size; no raw TeX is left in its prose."
    for nb in ['index.ipynb'] + _numbered():
        p = pages[_page(nb)]
        assert p['katex_errors'] == 0, nb
        if _has_tex(nb):
            assert p['maths'] and all(w > 0 for w in p['maths']), f"{nb}: formulas not drawn: {p['maths']}"
        raw = [t for t in RAW_TEX if t in p['prose']]
        assert not raw, f"{nb}: raw TeX {raw} in {p['prose'][max(0, p['prose'].find(raw[0]) - 200):][:400]!r}"


def test_no_page_shows_local_paths_progress_bars_or_borrowed_docstrings(pages):
    for name, p in pages.items():
        bad = [t for t in LOCAL + NOISE if t in p['shown']]
        where = [p['shown'][max(0, p['shown'].find(t) - 150):][:300] for t in bad]
        assert not bad, f"{name} shows {bad}: {where}"


def test_tables_and_the_experiments_figure(pages):
    assert pages['index.html']['tables'] >= 2, pages['index.html']['tables']          # chapters, Table 17
    exp = pages[_page('20_experiments.ipynb')]
    assert exp['tables'] >= 7, "experiments page: Tables 17, 1, 3, 5, beyond, tokens197, the claims and the runs"
    if list((ROOT / 'experiments' / 'tables').glob('*/fig3b_soft_mask.png')):
        assert any('data:image/png' in i['src'] for i in exp['images']), "Fig. 3(b) is not on the experiments page"


def test_no_broken_links_or_anchors(pages, server):
    local = sorted({urllib.parse.urldefrag(u)[0] for p in pages.values() for u in p['links'] if u.startswith(server)})
    assert len(local) > len(pages), local
    broken = []
    for u in local:
        try:
            with urllib.request.urlopen(u, timeout=10) as r: code = r.status
        except urllib.error.HTTPError as e: code = e.code
        if code != 200: broken.append((u, code))
    assert not broken, broken
    loaded = {server + n: p for n, p in pages.items()}
    missing = sorted({u.removeprefix(server) for p in pages.values() for u in p['links']
                      if urllib.parse.urldefrag(u)[1] and urllib.parse.urldefrag(u)[0] in loaded
                      and urllib.parse.unquote(urllib.parse.urldefrag(u)[1]) not in loaded[urllib.parse.urldefrag(u)[0]]['ids']})
    assert not missing, f"links to anchors that are not on their page: {missing}"


def test_experiments_page_picks_up_runs(tmp_path):
    "The experiments page shows the result records, tables and figure that appear in experiments/, with no code change."
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from illama.results import write_result
    from illama.workshop.docs import process_notebook
    from illama.workshop.rows import get_rows
    from illama.workshop.layout import result_path
    (tmp_path / 'nbs').mkdir()
    shutil.copy(ROOT / 'nbs' / '20_experiments.ipynb', tmp_path / 'nbs')
    shutil.copy(ROOT / 'settings.ini', tmp_path)
    ex = tmp_path / 'experiments'
    vit, lin = get_rows('table17', ['ViT'])[0], get_rows('table3', ['linear 50'])[0]
    for spec, seed, acc in [(vit, 0, 61.0), (vit, 1, 65.0), (lin, 0, 55.5)]:
        write_result(result_path(ex, 'cpu', spec, seed), dict(run_id=spec.run_id, table=spec.table, row=spec.row,
                                                              seed=seed, top1=acc, train_loss=1.5, wall_time_s=90.0))
    (ex / 'results' / 'cpu' / 'lpe__seed0.json').write_text('{"status": "ok", "to')
    (ex / 'tables' / 'cpu').mkdir(parents=True)
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([3, 2, 1])
    fig.savefig(ex / 'tables' / 'cpu' / 'fig3b_soft_mask.png')
    plt.close(fig)
    nb = process_notebook(tmp_path / 'nbs' / '20_experiments.ipynb')
    outs = [o for c in nb.cells for o in c.get('outputs', [])]
    md = '\n'.join(''.join(o['data']['text/markdown']) for o in outs if 'text/markdown' in o.get('data', {}))
    assert '| ViT | 73.8 | 81.5 | 3.451 | 2.828 | 63.0 ± 2.8 |' in md, md[:3000]      # paper beside ours, one table
    assert md.count('| ViT | 73.8 |') == 1 and '| linear 50 | 74.9 | 81.5 | ? | ? | 55.5 |' in md, md
    assert f'`{lin.run_id}` | 0 | 55.5 | 1.500 | ? | 1.5 | ok |' in md and '- `lpe`: ' in md, md    # runs, corrupt file
    assert str(tmp_path) not in md and 'Git revision' not in md
    assert sum('image/png' in o.get('data', {}) for o in outs) == 1 and 'fig3b_soft_mask.png' in md
    assert md.count('not run') >= 3                        # the rows of Tables 1, 5 and the others with no record
