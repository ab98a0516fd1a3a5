// instructrl labeling: ranking with ties (drag and drop + keyboard) and the edit picker.
// No framework, no build. State is a list of groups of response indices, best first; a group
// of several is a tie. It is written to the hidden `ranking` field as JSON on every change.
(function () {
  'use strict';

  function initRanking(widget) {
    const input = document.getElementById('ranking-input');
    const status = document.getElementById('ranking-status');
    const cards = JSON.parse(widget.dataset.cards);  // [{idx, letter, preview}] in display order
    const byIdx = new Map(cards.map(c => [c.idx, c]));
    let groups = cards.map(c => [c.idx]);
    let dragged = null;

    function where(idx) {
      for (let g = 0; g < groups.length; g++) if (groups[g].includes(idx)) return g;
      return -1;
    }
    function describe() {
      return groups.map((g, n) => (n + 1) + ': ' + g.map(i => byIdx.get(i).letter).join(' = ')).join(', ');
    }
    function commit(focusIdx) {
      groups = groups.filter(g => g.length > 0);
      input.value = JSON.stringify(groups);
      render();
      status.textContent = 'Ranking, best first — ' + describe();
      if (focusIdx !== undefined) {
        const el = widget.querySelector('.card[data-idx="' + focusIdx + '"]');
        if (el) el.focus();
      }
    }

    // Keyboard: half steps. A card in a tie leaves it (to a row of its own above / below);
    // a card alone joins the neighbouring row (a tie). Every ranking is reachable.
    function move(idx, dir) {
      const g = where(idx);
      if (groups[g].length > 1) {
        groups[g] = groups[g].filter(i => i !== idx);
        groups.splice(dir < 0 ? g : g + 1, 0, [idx]);
      } else {
        const t = g + dir;
        if (t < 0 || t >= groups.length) return;
        groups[t].push(idx);
        groups[g] = [];
      }
      commit(idx);
    }

    // Drag and drop: onto a row = tie with it; onto the gap between rows = a row of its own.
    function removeIdx(idx) {
      groups.forEach(g => { const k = g.indexOf(idx); if (k >= 0) g.splice(k, 1); });
    }
    function dropOnTier(idx, target) {
      const tgt = groups[target];
      removeIdx(idx);
      tgt.push(idx);
      commit(idx);
    }
    function dropInGap(idx, before) {  // before: the row it goes above (groups.length = last)
      removeIdx(idx);
      const at = groups.slice(0, before).filter(g => g.length > 0).length;
      groups = groups.filter(g => g.length > 0);
      groups.splice(at, 0, [idx]);
      commit(idx);
    }

    function dropZone(el, onDrop) {
      el.addEventListener('dragover', e => { e.preventDefault(); e.dataTransfer.dropEffect = 'move'; el.classList.add('over'); });
      el.addEventListener('dragleave', () => el.classList.remove('over'));
      el.addEventListener('drop', e => {
        e.preventDefault(); e.stopPropagation(); el.classList.remove('over');
        const idx = dragged !== null ? dragged : parseInt(e.dataTransfer.getData('text/plain'), 10);
        if (!Number.isNaN(idx)) onDrop(idx);
      });
    }
    function gap(before) {
      const el = document.createElement('div');
      el.className = 'gap';
      el.dataset.before = before;
      dropZone(el, idx => dropInGap(idx, before));
      return el;
    }

    function render() {
      widget.replaceChildren();
      groups.forEach((g, n) => {
        widget.appendChild(gap(n));
        const tier = document.createElement('div');
        tier.className = 'tier' + (g.length > 1 ? ' tied' : '');
        tier.dataset.rank = n + 1;
        tier.setAttribute('role', 'listitem');
        const rank = document.createElement('div');
        rank.className = 'rank';
        rank.textContent = '#' + (n + 1);
        if (g.length > 1) { const s = document.createElement('small'); s.textContent = 'tie'; rank.appendChild(s); }
        const box = document.createElement('div');
        box.className = 'cards';
        g.forEach(idx => {
          const c = byIdx.get(idx);
          const card = document.createElement('div');
          card.className = 'card';
          card.tabIndex = 0;
          card.draggable = true;
          card.dataset.idx = idx;
          card.dataset.letter = c.letter;
          card.setAttribute('aria-label', 'Response ' + c.letter + ', rank ' + (n + 1) +
            (g.length > 1 ? ' (tied)' : '') + '. Arrow keys move it.');
          const letter = document.createElement('span');
          letter.className = 'letter'; letter.textContent = c.letter;
          const prev = document.createElement('span');
          prev.className = 'preview'; prev.textContent = c.preview || '(empty response)';
          card.append(letter, prev);
          card.addEventListener('keydown', e => {
            if (e.key === 'ArrowUp') { e.preventDefault(); move(idx, -1); }
            else if (e.key === 'ArrowDown') { e.preventDefault(); move(idx, +1); }
          });
          card.addEventListener('dragstart', e => {
            dragged = idx; card.classList.add('dragging'); widget.classList.add('drag-on');
            e.dataTransfer.effectAllowed = 'move';
            e.dataTransfer.setData('text/plain', String(idx));
          });
          card.addEventListener('dragend', () => {
            dragged = null; card.classList.remove('dragging'); widget.classList.remove('drag-on');
          });
          box.appendChild(card);
        });
        tier.append(rank, box);
        dropZone(tier, idx => dropOnTier(idx, n));
        widget.appendChild(tier);
      });
      widget.appendChild(gap(groups.length));
    }

    // Seed the ranking from the Likert scores: higher first, equal scores tied.
    const byLikert = document.getElementById('by-likert');
    if (byLikert) byLikert.addEventListener('click', () => {
      const score = idx => {
        const r = document.querySelector('input[name="likert_' + idx + '"]:checked');
        return r ? parseInt(r.value, 10) : 0;
      };
      const levels = [...new Set(cards.map(c => score(c.idx)))].sort((a, b) => b - a);
      groups = levels.map(v => cards.filter(c => score(c.idx) === v).map(c => c.idx));
      commit();
    });

    commit();
  }

  function initEdit(form) {
    const text = document.getElementById('edit-text');
    let touched = false;
    text.addEventListener('input', () => { touched = true; });
    form.querySelectorAll('input[name="base"]').forEach(r => r.addEventListener('change', () => {
      if (!touched || window.confirm('Replace your edit with this response?')) {
        text.value = r.dataset.text; touched = false;
      }
    }));
  }

  const widget = document.getElementById('ranking-widget');
  if (widget) initRanking(widget);
  const edit = document.getElementById('edit-form');
  if (edit) initEdit(edit);
})();
