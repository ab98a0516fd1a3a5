// instructrl labeling: ranking with ties (buttons, drag and drop, keyboard) and the edit picker.
// No framework, no build. State is a list of groups of response indices, best first; a group
// of several is a tie. The hidden `ranking` field stays empty until the labeler ranks on
// purpose (moves a card, or presses "Order by Likert" / "Keep this order"): the order the
// page happens to show must never be submitted as a judgement.
(function () {
  'use strict';

  function initRanking(widget, form) {
    const input = document.getElementById('ranking-input');
    const status = document.getElementById('ranking-status');
    const confirmed = document.getElementById('contradiction-ok');
    const warning = document.getElementById('ranking-warning');
    const conflictList = document.getElementById('ranking-conflicts');
    const cards = JSON.parse(widget.dataset.cards);  // [{idx, letter, preview}] in display order
    const byIdx = new Map(cards.map(c => [c.idx, c]));
    let groups = cards.map(c => [c.idx]);
    let ranked = false;
    let dragged = null;
    input.value = '';  // nothing a browser restored from an earlier visit
    confirmed.value = '';

    function where(idx) {
      for (let g = 0; g < groups.length; g++) if (groups[g].includes(idx)) return g;
      return -1;
    }
    function letter(idx) { return byIdx.get(idx).letter; }
    function describe() {
      return groups.map((g, n) => (n + 1) + ': ' + g.map(letter).join(' = ')).join(', ');
    }
    function likert(idx) {
      const r = form.querySelector('input[name="likert_' + idx + '"]:checked');
      return r ? parseInt(r.value, 10) : null;
    }
    function hideWarning() {
      confirmed.value = '';
      warning.hidden = true;
    }
    // A ranked action: the state becomes the labeler's ranking.
    function commit(focusIdx, focusWhat) {
      groups = groups.filter(g => g.length > 0);
      ranked = true;
      input.value = JSON.stringify(groups);
      widget.classList.remove('unranked');
      hideWarning();
      render();
      status.textContent = 'Ranking, best first — ' + describe();
      if (focusIdx !== undefined) {
        const card = widget.querySelector('.card[data-idx="' + focusIdx + '"]');
        const btn = card && focusWhat ? card.querySelector('button.' + focusWhat) : null;
        if (btn && !btn.disabled) btn.focus(); else if (card) card.focus();
      }
    }

    // Leave a tie for a row of its own on the `dir` side; false when the card is alone.
    function leaveTie(idx, dir) {
      const g = where(idx);
      if (groups[g].length === 1) return false;
      groups[g] = groups[g].filter(i => i !== idx);
      groups.splice(dir < 0 ? g : g + 1, 0, [idx]);
      return true;
    }
    // Keyboard: half steps. A card in a tie leaves it (to a row of its own above / below);
    // a card alone joins the neighbouring row (a tie). Every ranking is reachable.
    function halfStep(idx, dir) {
      if (!leaveTie(idx, dir)) {
        const g = where(idx), t = g + dir;
        if (t < 0 || t >= groups.length) return;
        groups[t].push(idx);
        groups[g] = [];
      }
      commit(idx);
    }
    // Buttons (touch): a whole step, to a row of its own past the neighbouring row; "=" ties
    // the card with the row above.
    function step(idx, dir) {
      if (!leaveTie(idx, dir)) {
        const g = where(idx), t = g + dir;
        if (t < 0 || t >= groups.length) return;
        [groups[g], groups[t]] = [groups[t], groups[g]];
      }
      commit(idx, dir < 0 ? 'move-up' : 'move-down');
    }
    function tieUp(idx) {
      const g = where(idx);
      if (g === 0) return;
      groups[g] = groups[g].filter(i => i !== idx);
      groups[g - 1].push(idx);
      commit(idx, 'tie-up');
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
    function button(cls, text, label, disabled, onClick) {
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'move ' + cls;
      b.textContent = text;
      b.setAttribute('aria-label', label);
      b.title = label;
      b.disabled = disabled;
      b.addEventListener('click', onClick);
      return b;
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
          const lt = document.createElement('span');
          lt.className = 'letter'; lt.textContent = c.letter;
          const prev = document.createElement('span');
          prev.className = 'preview'; prev.textContent = c.preview || '(empty response)';
          const alone = g.length === 1;
          const tools = document.createElement('span');
          tools.className = 'moves';
          tools.append(
            button('move-up', '↑', 'Move response ' + c.letter + ' up', n === 0 && alone, () => step(idx, -1)),
            button('move-down', '↓', 'Move response ' + c.letter + ' down',
                   n === groups.length - 1 && alone, () => step(idx, +1)),
            button('tie-up', '=', 'Tie response ' + c.letter + ' with the row above', n === 0, () => tieUp(idx)));
          card.append(lt, prev, tools);
          card.addEventListener('keydown', e => {
            if (e.target !== card) return;  // the buttons inside keep their own keys
            if (e.key === 'ArrowUp') { e.preventDefault(); halfStep(idx, -1); }
            else if (e.key === 'ArrowDown') { e.preventDefault(); halfStep(idx, +1); }
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
    document.getElementById('by-likert').addEventListener('click', () => {
      const missing = cards.filter(c => likert(c.idx) === null).map(c => c.letter);
      if (missing.length) {
        status.textContent = 'Give every response a Likert score first (missing: ' + missing.join(', ') + ').';
        return;
      }
      const levels = [...new Set(cards.map(c => likert(c.idx)))].sort((a, b) => b - a);
      groups = levels.map(v => cards.filter(c => likert(c.idx) === v).map(c => c.idx));
      commit();
    });
    document.getElementById('keep-order').addEventListener('click', () => commit());

    // Pairs ranked strictly one way but scored the other way (forms.contradictions).
    function conflicts() {
      const rank = new Map();
      groups.forEach((g, n) => g.forEach(i => rank.set(i, n)));
      const out = [];
      for (const [i, ri] of rank) for (const [j, rj] of rank) {
        const li = likert(i), lj = likert(j);
        if (ri < rj && li !== null && lj !== null && li < lj) out.push([i, j]);
      }
      return out.sort((a, b) => letter(a[0]).localeCompare(letter(b[0])) || letter(a[1]).localeCompare(letter(b[1])));
    }
    form.addEventListener('change', e => {
      if (e.target.name && e.target.name.startsWith('likert_')) hideWarning();
    });
    form.addEventListener('submit', e => {
      if (!ranked) {
        e.preventDefault();
        status.textContent = 'Rank the responses first: move the cards, or press "Order by Likert scores" or "Keep this order".';
        status.classList.add('error');
        widget.scrollIntoView({block: 'center'});
        return;
      }
      status.classList.remove('error');
      const bad = conflicts();
      if (bad.length && confirmed.value !== '1') {
        e.preventDefault();
        conflictList.replaceChildren(...bad.map(([i, j]) => {
          const li = document.createElement('li');
          li.textContent = 'You ranked ' + letter(i) + ' above ' + letter(j) + ', but scored ' +
            letter(i) + ' ' + likert(i) + ' and ' + letter(j) + ' ' + likert(j) + '.';
          return li;
        }));
        warning.hidden = false;
        warning.scrollIntoView({block: 'center'});
        document.getElementById('fix-ranking').focus();
      }
    });
    document.getElementById('fix-ranking').addEventListener('click', () => {
      hideWarning();
      const first = widget.querySelector('.card');
      if (first) first.focus();
    });
    document.getElementById('submit-anyway').addEventListener('click', () => {
      confirmed.value = '1';
      form.requestSubmit();
    });

    render();
  }

  // The edit picker: the text box always holds an edit of the checked response. Choosing
  // another response after editing asks first; "cancel" keeps both the edit and its response.
  function initEdit(form) {
    const text = document.getElementById('edit-text');
    let current = form.querySelector('input[name="base"]:checked');
    let touched = false;
    text.addEventListener('input', () => { touched = true; });
    form.querySelectorAll('input[name="base"]').forEach(r => r.addEventListener('change', () => {
      if (!touched || window.confirm('Replace your edit with this response?')) {
        text.value = r.dataset.text; touched = false; current = r;
      } else if (current) {
        current.checked = true;  // the edit stays, and so does the response it was made from
      }
    }));
  }

  const rankForm = document.getElementById('rank-form');
  const widget = document.getElementById('ranking-widget');
  if (widget && rankForm) initRanking(widget, rankForm);
  const edit = document.getElementById('edit-form');
  if (edit) initEdit(edit);
})();
