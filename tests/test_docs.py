"""The docs site in a real browser: `illama-docs` builds it from the notebooks into a temporary folder, a local HTTP
server serves it on 127.0.0.1, and Debian's headless Chromium (driven through chromedriver by selenium) loads the home
page and every page in the sidebar. Skipped, with the reason, where chromium or chromedriver is not installed
(`.ci/run` installs both)."""
import functools, http.server, json, os, re, shutil, socket, subprocess, sys, threading, urllib.error, urllib.parse
import urllib.request, warnings
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which('chromium') or ('/usr/bin/chromium' if Path('/usr/bin/chromium').exists() else None)
DRIVER = shutil.which('chromedriver') or ('/usr/bin/chromedriver' if Path('/usr/bin/chromedriver').exists() else None)
needs_browser = pytest.mark.skipif(not (CHROMIUM and DRIVER),
    reason="headless browser test needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver): "
           "apt-get install -y chromium chromium-driver (.ci/run does)")
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--disable-quic', '--disable-dev-shm-usage',
         '--window-size=1280,1000']


def _renderer():
    return 'quarto' if shutil.which('quarto') else 'smalldocs'

def _page(nb_name):
    "The HTML page of a notebook under the renderer in use (same rule as illama.docs.page_name)."
    if _renderer() == 'quarto': return re.sub(r'^\d+[a-zA-Z0-9]*_', '', nb_name.lower()).removesuffix('.ipynb') + '.html'
    return nb_name.removesuffix('.ipynb') + '.html'

def _numbered():
    "The numbered notebooks in nbs/, in number order: the order the sidebar must show them in."
    nbs = [p.name for p in (ROOT / 'nbs').glob('*.ipynb') if re.match(r'^\d+_', p.name)]
    return sorted(nbs, key=lambda n: (int(n.split('_')[0]), n))

def _has_figure(nb_name):
    "Whether a notebook draws a figure in a cell the docs run (a matplotlib call outside `#| eval: false` / skip flags)."
    nb = json.loads((ROOT / 'nbs' / nb_name).read_text())
    for c in nb['cells']:
        src = ''.join(c['source'])
        if c['cell_type'] != 'code' or re.search(r'^#\|\s*(eval:\s*false|hide|notest|slow)\b', src, re.M): continue
        if re.search(r'\bplt\.|\.plot\(|\bplot_\w+\(|\bimshow\(|\bImage\(', src): return True
    return False

ROADMAP = ['00_vit.ipynb', '01_swiglu.ipynb', '02_rmsnorm.ipynb', '03_causal.ipynb', '04_rope.ipynb',
           '05_soft_mask.ipynb', '06_illama.ipynb']


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "Build the site from this checkout's notebooks with the documented command, into a temporary folder."
    out = tmp_path_factory.mktemp('docs') / '_docs'
    env = {**os.environ, 'PYTHONPATH': str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', '')}
    cli = Path(sys.executable).with_name('illama-docs')          # the documented command, where it is installed
    cmd = [str(cli)] if cli.exists() else [sys.executable, '-m', 'illama.docs']
    r = subprocess.run(cmd + ['--root', str(ROOT), '--out', str(out), '--no-readme'],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-8000:]
    assert (out / 'index.html').is_file()
    return out


@pytest.fixture(scope='module')
def server(site):
    "Serve the site on 127.0.0.1, on a free port."
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a): pass
    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):      # the browser closing a connection early is not an error
            if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)): super().handle_error(request, client_address)
    httpd = Server(('127.0.0.1', 0), functools.partial(Quiet, directory=str(site)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True); t.start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}/'
    httpd.shutdown(); httpd.server_close()


@pytest.fixture(scope='module')
def browser(tmp_path_factory):
    "Debian's Chromium, headless, with a fresh profile, through Debian's chromedriver (nothing is downloaded)."
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS + [f'--user-data-dir={tmp_path_factory.mktemp("chromium-profile")}']: opts.add_argument(f)
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    d = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    d.set_page_load_timeout(60)
    yield d
    d.quit()


@pytest.fixture(scope='module')
def pages(site, server, browser):
    "Load the home page and every page of the sidebar; record links, images, tables; save a screenshot of each."
    shots = Path(os.environ.get('ILLAMA_DOCS_SCREENSHOTS') or site.parent / 'screenshots'); shots.mkdir(parents=True, exist_ok=True)
    def load(name):
        browser.get(server + name)
        info = browser.execute_script("""
            const abs = (u) => new URL(u, document.baseURI).href;
            return {
              title: document.title,
              sidebar: Array.from(document.querySelectorAll('#quarto-sidebar a[href]')).map(a => a.getAttribute('href')),
              links: Array.from(document.querySelectorAll('a[href], link[href], script[src], img[src]'))
                          .map(e => abs(e.getAttribute('href') || e.getAttribute('src'))),
              images: Array.from(document.images).map(i => ({src: i.src.slice(0, 80), complete: i.complete, w: i.naturalWidth})),
              tables: document.querySelectorAll('main table, #quarto-document-content table').length,
              ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
              height: document.documentElement.scrollHeight};""")
        browser.set_window_size(1280, max(800, min(info['height'], 4000)))
        browser.save_screenshot(str(shots / (name.replace('/', '_') + '.png')))
        browser.set_window_size(1280, 1000)
        info['log'] = [e for e in browser.get_log('browser') if e['level'] == 'SEVERE']
        return info
    res = {'index.html': load('index.html')}
    for href in res['index.html']['sidebar']:
        name = urllib.parse.urlparse(href).path.lstrip('/') or 'index.html'
        if name not in res: res[name] = load(name)
    return res


@needs_browser
def test_navigation_lists_roadmap_in_order(pages):
    side = [urllib.parse.urlparse(h).path.split('/')[-1] for h in pages['index.html']['sidebar']]
    pos = {n: i for i, n in reversed(list(enumerate(side)))}
    numbered = [_page(n) for n in _numbered()]
    missing = [n for n in numbered if n not in pos]
    assert not missing, f"pages missing from the sidebar: {missing}; sidebar: {side}"
    assert [n for n in side if n in numbered] == numbered, side
    assert [_page(n) for n in ROADMAP] == [n for n in numbered if n in map(_page, ROADMAP)], "roadmap chapters missing"
    assert side[0] == 'index.html'
    # every page links the same sidebar
    for name, p in pages.items(): assert p['sidebar'] == pages['index.html']['sidebar'], name


@needs_browser
def test_every_roadmap_page_loads_with_its_figures(pages):
    for nb in ['index.ipynb'] + _numbered():
        p = pages.get(_page(nb))
        assert p is not None, f"{nb}: not reached from the sidebar"
        bad = [i for i in p['images'] if not i['complete'] or i['w'] <= 0]
        assert not bad, f"{nb}: images that did not load: {bad}"
        if nb == 'index.ipynb' or (nb in ROADMAP and _has_figure(nb)):
            assert p['images'], f"{nb} draws a figure but its page shows no image"
        assert not [e for e in p['log'] if '127.0.0.1' in e['message']], f"{nb}: {p['log']}"


@needs_browser
def test_tables_are_present(pages):
    assert pages['index.html']['tables'] >= 2, pages['index.html']['tables']          # chapters, Table 17
    exp = [p for n, p in pages.items() if 'experiments' in n]
    assert exp and exp[0]['tables'] >= 4, "experiments page with Tables 17, 1, 3, 5"


@needs_browser
def test_no_broken_internal_links(pages, server):
    local = sorted({urllib.parse.urldefrag(u)[0] for p in pages.values() for u in p['links'] if u.startswith(server)})
    assert len(local) > len(pages), local
    broken = []
    for u in local:
        try:
            with urllib.request.urlopen(u, timeout=10) as r: code = r.status
        except urllib.error.HTTPError as e: code = e.code
        if code != 200: broken.append((u, code))
    assert not broken, broken
    # links into a page (symbol links, tables of contents) should land on an element of it; one that does not still
    # opens the right page, so it is reported, not failed (e.g. a link to a show_doc that a chapter hides)
    loaded = {server + n: p for n, p in pages.items()}
    missing = sorted({u.removeprefix(server) for p in pages.values() for u in p['links']
                      if urllib.parse.urldefrag(u)[1] and urllib.parse.urldefrag(u)[0] in loaded
                      and urllib.parse.unquote(urllib.parse.urldefrag(u)[1]) not in loaded[urllib.parse.urldefrag(u)[0]]['ids']})
    if missing: warnings.warn(f"links to anchors that are not on their page: {missing}")


def test_experiments_page_picks_up_runs(tmp_path):
    "The experiments page shows run records, tables and figures that appear in experiments/, with no code change."
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from illama.docs import process_notebook
    (tmp_path / 'nbs').mkdir()
    shutil.copy(ROOT / 'nbs' / '20_experiments.ipynb', tmp_path / 'nbs')
    shutil.copy(ROOT / 'settings.ini', tmp_path)
    ex = tmp_path / 'experiments'
    for d in ['results', 'tables/cpu', 'runs/cpu/table17']: (ex / d).mkdir(parents=True)
    for seed, acc in [(0, 61.0), (1, 65.0)]:
        (ex / 'results' / f'vit-{seed}.json').write_text(json.dumps({'step': 'ViT', 'table': 'table17', 'regime': 'cpu',
                                                                     'seed': seed, 'top1': acc, 'train_loss': 1.5}))
    (ex / 'tables' / 'cpu' / 'table17.md').write_text('| step | ours |\n|---|---|\n| ViT | 63.0 ± 2.8 |\n')
    (ex / 'tables' / 'cpu' / 'table3.md').write_text('| schedule | ours |\n|---|---|\n| linear | 55.5 |\n')
    fig, ax = plt.subplots(figsize=(2, 2)); ax.plot([3, 2, 1]); fig.savefig(ex / 'runs' / 'cpu' / 'table17' / 'curves.png'); plt.close(fig)
    nb = process_notebook(tmp_path / 'nbs' / '20_experiments.ipynb')
    outs = [o for c in nb.cells for o in c.get('outputs', [])]
    md = '\n'.join(''.join(o['data']['text/markdown']) for o in outs if 'text/markdown' in o.get('data', {}))
    assert '| ViT | 73.8 | 3.451 | 81.5 | 2.828 | 63.0 ± 2.8 (n=2) |' in md, md[:3000]      # paper beside ours
    assert '63.0 ± 2.8 |' in md and '55.5' in md and 'vit-1.json' in md and 'runs/cpu/table17/curves.png' in md
    assert sum('image/png' in o.get('data', {}) for o in outs) == 1
    assert 'table3' in md and md.count('not run yet') >= 2              # Tables 1 and 5 still have no tables of ours
