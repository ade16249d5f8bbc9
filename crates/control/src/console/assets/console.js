// madbase console: progressive enhancement only (every flow works without it).
// Copy buttons: <button data-copy="ID" hidden> copies the value of #ID.
document.addEventListener('DOMContentLoaded', () => {
  for (const button of document.querySelectorAll('button[data-copy]')) {
    const target = document.getElementById(button.dataset.copy)
    if (!target || !navigator.clipboard) continue
    button.hidden = false
    button.addEventListener('click', async () => {
      try {
        await navigator.clipboard.writeText(target.value ?? target.textContent)
        button.textContent = 'Copied'
      } catch {
        target.select()
        button.textContent = 'Press Ctrl+C'
      }
      setTimeout(() => { button.textContent = 'Copy' }, 2000)
    })
  }
  // A file input fills a textarea (the form itself posts the textarea).
  for (const input of document.querySelectorAll('input[type="file"][data-load]')) {
    const target = document.getElementById(input.dataset.load)
    if (!target || !window.FileReader) continue
    input.closest('[hidden]')?.removeAttribute('hidden')
    input.addEventListener('change', async () => {
      const file = input.files && input.files[0]
      if (file) target.value = await file.text()
    })
  }
  // Ctrl/Cmd+Enter runs the SQL editor's query.
  const query = document.getElementById('query')
  if (query) {
    query.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) query.form.requestSubmit()
    })
  }
})
